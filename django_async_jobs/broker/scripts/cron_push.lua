-- Enqueue a recurring job for one tick, once across every process and host.
-- KEYS[4] = the entry's hash (tick, job_id, enqueued_at), KEYS[5] = the job's enqueue lock for
-- a unique job (absent otherwise). ARGV[3] = tick epoch seconds, ARGV[4] = job id, ARGV[5] =
-- payload, ARGV[6] = the lock's TTL in ms (with KEYS[5]).
-- Returns {1} when enqueued; {0} when this tick or a later one was handled already; {-1, holder}
-- when another job holds the lock: the tick counts as handled, so no other process retries it.
local entry, tick = KEYS[4], tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', entry, 'tick') or '-1')
if last >= tick then return {0} end
local payload = ARGV[5]
local job = decode(payload)
if not job then return redis.error_reply('cron_push: payload names no queue') end
local lock = KEYS[5]
if lock and not redis.call('SET', lock, ARGV[4], 'NX', 'PX', ARGV[6]) then
  redis.call('HSET', entry, 'tick', ARGV[3], 'job_id', '', 'enqueued_at', tostring(now_seconds()))
  return {-1, redis.call('GET', lock) or ''}
end
redis.call('HSET', entry, 'tick', ARGV[3], 'job_id', ARGV[4], 'enqueued_at', tostring(now_seconds()))
enqueue(payload, job)
redis.call('PUBLISH', CHANNEL, 'ready')
return {1}
