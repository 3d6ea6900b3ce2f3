-- Hand back the in-flight jobs of processes whose heartbeat is older than ARGV[4] seconds.
-- KEYS[4] = processes zset, KEYS[5] = recovery counts. ARGV[3] = in-flight key base,
-- ARGV[5] = max recoveries, ARGV[6] = process info key base, ARGV[7] = fetch record key base,
-- ARGV[8] = seconds a recovered process's fetch record is kept.
-- A job recovered more than max times is a poison pill: it goes to the dead stage instead.
-- The fetch record is left to expire, not deleted: a process taken for dead may only have
-- stalled, and when it beats again its record must still order its fetch attempts, or a late
-- copy of a fetch it already had the reply of would move jobs that it never hears of.
local processes, recoveries = KEYS[4], KEYS[5]
local inflight_base, timeout, max_recoveries = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local process_base, record_base = ARGV[6], ARGV[7]
local now = now_seconds()
local gone = redis.call('ZRANGEBYSCORE', processes, '-inf', now - timeout, 'LIMIT', 0, 20)
local recovered, dead = 0, 0
for _, pid in ipairs(gone) do
  local inflight = inflight_base .. pid
  local entries = redis.call('HGETALL', inflight)
  for i = 1, #entries, 2 do
    if recover_job(recoveries, entries[i], entries[i + 1], now, max_recoveries) then
      recovered = recovered + 1
    else
      dead = dead + 1
    end
  end
  redis.call('DEL', inflight, process_base .. pid)
  redis.call('EXPIRE', record_base .. pid, ARGV[8])
  redis.call('ZREM', processes, pid)
end
if recovered > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return {#gone, recovered, dead}
