-- Enqueue a unique job: take its lock and push it in one step, or do neither.
-- KEYS[4] = lock key, KEYS[5] = schedule zset. ARGV[3] = job id (the lock's value), ARGV[4] =
-- lock TTL in ms, ARGV[5] = payload, ARGV[6] = run-at epoch for a delayed job, '' for now.
-- The lock's own job may enqueue again (retry_job): it renews the lock instead of conflicting.
-- Returns {1} when pushed, {0, holder} when another job holds the lock.
local key, token, ttl = KEYS[4], ARGV[3], ARGV[4]
if not redis.call('SET', key, token, 'NX', 'PX', ttl) then
  local holder = redis.call('GET', key)
  if holder and holder ~= token then return {0, holder} end
  redis.call('SET', key, token, 'PX', ttl)
end
local payload = ARGV[5]
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], tonumber(ARGV[6]), payload)
  return {1}
end
local job = decode(payload)
if not job then return redis.error_reply('lock_push: payload names no queue') end
enqueue(payload, job)
redis.call('PUBLISH', CHANNEL, 'ready')
return {1}
