-- Add one flush of a worker's per-class metrics (metrics.py) to the minute hashes and to the
-- hour hashes beside them, so a long window reads an hour in one hash, not sixty.
-- KEYS[4 ..] = pairs: a minute's hash, then its hour's. From ARGV[3], for each pair in order:
-- the minute hash's TTL, the hour hash's TTL (seconds), n, then n field/amount pairs. An amount
-- with a '.' is a float (milliseconds), else a count.
local a = 3
for i = 4, #KEYS, 2 do
  local minute, hour = KEYS[i], KEYS[i + 1]
  local minute_ttl, hour_ttl, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  for j = a, a + 2 * n - 1, 2 do
    if string.find(ARGV[j + 1], '.', 1, true) then
      redis.call('HINCRBYFLOAT', minute, ARGV[j], ARGV[j + 1])
      redis.call('HINCRBYFLOAT', hour, ARGV[j], ARGV[j + 1])
    else
      redis.call('HINCRBY', minute, ARGV[j], ARGV[j + 1])
      redis.call('HINCRBY', hour, ARGV[j], ARGV[j + 1])
    end
  end
  a = a + 2 * n
  redis.call('EXPIRE', minute, minute_ttl)
  redis.call('EXPIRE', hour, hour_ttl)
end
return (#KEYS - 3) / 2
