-- Hand back the in-flight jobs of processes whose heartbeat is older than ARGV[4] seconds.
-- KEYS[4] = processes zset, KEYS[5] = recovery counts. ARGV[3] = in-flight key base,
-- ARGV[5] = max recoveries, ARGV[6] = process info key base.
-- A job recovered more than max times is a poison pill: it goes to the dead stage instead.
local processes, recoveries = KEYS[4], KEYS[5]
local inflight_base, timeout, max_recoveries = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local process_base = ARGV[6]
local now = now_seconds()
local gone = redis.call('ZRANGEBYSCORE', processes, '-inf', now - timeout, 'LIMIT', 0, 20)
local recovered, dead = 0, 0
for _, pid in ipairs(gone) do
  local inflight = inflight_base .. pid
  local entries = redis.call('HGETALL', inflight)
  for i = 1, #entries, 2 do
    local field = entries[i]
    local count = redis.call('HINCRBY', recoveries, job_key(field), 1)
    local reason = nil
    if count > max_recoveries then reason = 'poison_pill' end
    if hand_back(field, entries[i + 1], now, reason) then
      recovered = recovered + 1
    else
      redis.call('HDEL', recoveries, job_key(field))
      dead = dead + 1
    end
  end
  redis.call('DEL', inflight, process_base .. pid)
  redis.call('ZREM', processes, pid)
end
if recovered > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return {#gone, recovered, dead}
