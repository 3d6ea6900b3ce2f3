-- One call of a rate limiter (flow.RateLimit), whole or not at all. KEYS[4] = the limiter's key.
-- ARGV[3] = kind, ARGV[4] = its count n, ARGV[5] = its period in ms (concurrent: the lock
-- timeout), ARGV[6] = the lock's token (concurrent only).
-- Returns {1, 0} when the call may go ahead (and counts it), or {0, ms}: the wait until it
-- might, as far as the limiter can tell (concurrent: until its oldest lock times out).
-- Time is Redis's, so every host counts in the same windows.
local key, kind = KEYS[4], ARGV[3]
local n, period = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if kind == 'window' then
  -- n per window aligned to the clock: per = 1 s is each wall-clock second.
  local window = math.floor(now / period)
  local state = redis.call('HMGET', key, 'w', 'n')
  local used = 0
  if tonumber(state[1]) == window then used = tonumber(state[2]) or 0 end
  if used >= n then return {0, (window + 1) * period - now} end
  redis.call('HSET', key, 'w', window, 'n', used + 1)
  redis.call('PEXPIRE', key, period * 2)
  return {1, 0}
elseif kind == 'bucket' then
  -- Holds up to n tokens, refilled continuously at n per period: a burst of n, then n per period.
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]) or n, tonumber(state[2]) or now
  tokens = math.min(n, tokens + math.max(0, now - at) * n / period)
  if tokens < 1 then return {0, math.ceil((1 - tokens) * period / n)} end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'at', now)
  redis.call('PEXPIRE', key, period * 2)
  return {1, 0}
elseif kind == 'leaky' then
  -- Drains one call every period / n: evenly spaced, no burst (the generic cell rate algorithm).
  local interval = period / n
  local due = tonumber(redis.call('GET', key)) or 0
  if due > now then return {0, math.ceil(due - now)} end
  redis.call('SET', key, tostring(now + interval), 'PX', math.ceil(interval) + 1000)
  return {1, 0}
elseif kind == 'concurrent' then
  -- n locks held at once; a lock not released within the timeout is taken back.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= n then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {0, math.max(0, tonumber(oldest[2]) - now)}
  end
  redis.call('ZADD', key, now + period, ARGV[6])
  redis.call('PEXPIRE', key, period + 1000)
  return {1, 0}
end
return redis.error_reply('rate_limit: unknown kind ' .. tostring(kind))
