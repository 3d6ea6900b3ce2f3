-- Renew the locks of running jobs (KEYS[4..] = locks; ARGV[3..] = holder, TTL in ms, per lock):
-- each gets its full TTL again if its holder still holds it. A lock that expired and was taken
-- by another job is left alone. Returns how many were renewed.
local renewed = 0
for i = 4, #KEYS do
  local at = 3 + (i - 4) * 2
  if redis.call('GET', KEYS[i]) == ARGV[at] then
    redis.call('PEXPIRE', KEYS[i], ARGV[at + 1])
    renewed = renewed + 1
  end
end
return renewed
