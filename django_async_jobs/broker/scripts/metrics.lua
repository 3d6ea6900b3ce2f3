-- Add one flush of a worker's per-class metrics (metrics.py) to the minute hashes.
-- KEYS[4 ..] = one hash per minute. From ARGV[3], for each hash in order: its TTL in seconds,
-- n, then n field/amount pairs. An amount with a '.' is a float (milliseconds), else a count.
local a = 3
for i = 4, #KEYS do
  local ttl, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for j = a, a + 2 * n - 1, 2 do
    if string.find(ARGV[j + 1], '.', 1, true) then
      redis.call('HINCRBYFLOAT', KEYS[i], ARGV[j], ARGV[j + 1])
    else
      redis.call('HINCRBY', KEYS[i], ARGV[j], ARGV[j + 1])
    end
  end
  a = a + 2 * n
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS - 3
