-- Record that a process is alive (KEYS[4] = processes zset, KEYS[5] = its info hash).
-- Redis TIME, not the host clock, so hosts with skewed clocks agree on who is dead.
-- KEYS[6] = its fetch record. ARGV[3] = process id, ARGV[4] = info TTL, ARGV[5..] = info
-- field/value pairs.
local now = now_seconds()
redis.call('ZADD', KEYS[4], now, ARGV[3])
-- Recovery leaves a record to expire (recover.lua); a process taken for dead that beats again
-- is alive, and keeps it.
redis.call('PERSIST', KEYS[6])
if #ARGV > 4 then
  redis.call('HSET', KEYS[5], unpack(ARGV, 5, #ARGV))
end
redis.call('HSET', KEYS[5], 'beat', now)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[4]))
return tostring(now)
