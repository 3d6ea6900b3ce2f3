-- A concurrency limit's own steps (flow.py; the helpers are in lib.lua). KEYS[4] = the limit's
-- holders hash, KEYS[5] = the processes zset. ARGV[3] = op.
--   acquire: ARGV[4] = the job's in-flight field, ARGV[5] = its job id, ARGV[6] = the process id,
--            ARGV[7] = the limit's size, ARGV[8] = its duration in ms. Takes a place for the job
--            (the one kept for it, if it was moved from the blocked list, or a free one).
--            Returns 1, or 0 when the limit is full.
--   sweep  : KEYS[6] = the limit's blocked jobs, KEYS[7] = p:blocked; ARGV[4] = the limit's id,
--            ARGV[5] = its size, ARGV[6] = ms until the next look. Moves blocked jobs to their
--            queues for places freed without a job finishing (a holder's process taken for
--            dead, its duration up). Returns how many moved.
local holders, processes, op = KEYS[4], KEYS[5], ARGV[3]
local now = now_ms()
if op == 'acquire' then
  local ttl = tonumber(ARGV[8])
  local kept = redis.call('HDEL', holders, '@' .. ARGV[5]) == 1
  if not kept and live_holders(holders, processes, now) >= tonumber(ARGV[7]) then return 0 end
  redis.call('HSET', holders, ARGV[4], tostring(now + ttl) .. ' ' .. ARGV[6])
  if redis.call('PTTL', holders) < ttl then redis.call('PEXPIRE', holders, ttl) end
  return 1
elseif op == 'sweep' then
  local moved = unblock(holders, KEYS[6], processes, KEYS[7], ARGV[4], tonumber(ARGV[5]), now)
  if moved > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
  redis.call('ZADD', KEYS[7], 'XX', now + tonumber(ARGV[6]), ARGV[4])
  return moved
end
return redis.error_reply('concurrency: unknown op ' .. tostring(op))
