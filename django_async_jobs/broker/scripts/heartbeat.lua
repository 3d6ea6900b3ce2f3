-- Record that a process is alive (KEYS[4] = processes zset, KEYS[5] = its info hash), and hand
-- back the jobs it says none of its threads holds any more (KEYS[7] = its in-flight hash).
-- Redis TIME, not the host clock, so hosts with skewed clocks agree on who is dead.
-- KEYS[6] = its fetch record, KEYS[8] = recovery counts. ARGV[3] = process id, ARGV[4] = info
-- TTL, ARGV[5] = max recoveries, ARGV[6] = n, ARGV[7 .. 6 + n] = in-flight fields to hand back,
-- then info field/value pairs.
-- Returns {jobs handed back, jobs set aside as poison pills}.
local now = now_seconds()
redis.call('ZADD', KEYS[4], now, ARGV[3])
-- Recovery leaves a record to expire (recover.lua); a process taken for dead that beats again
-- is alive, and keeps it.
redis.call('PERSIST', KEYS[6])
local max_recoveries, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local back, dead = 0, 0
for i = 7, 6 + n do
  local payload = redis.call('HGET', KEYS[7], ARGV[i])
  if payload then  -- a copy of this beat may have run already
    redis.call('HDEL', KEYS[7], ARGV[i])
    if recover_job(KEYS[8], ARGV[i], payload, now, max_recoveries) then back = back + 1 else dead = dead + 1 end
  end
end
if back > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
if #ARGV > 6 + n then
  redis.call('HSET', KEYS[5], unpack(ARGV, 7 + n, #ARGV))
end
redis.call('HSET', KEYS[5], 'beat', now)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[4]))
return {back, dead}
