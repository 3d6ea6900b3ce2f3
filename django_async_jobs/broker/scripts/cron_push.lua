-- Enqueue a recurring job for one tick, once across every process and host.
-- KEYS[4] = the entry's hash (tick, job_id, enqueued_at). ARGV[3] = tick epoch seconds,
-- ARGV[4] = job id, ARGV[5] = payload. A tick at or before the recorded one was enqueued
-- already (or is older than one that was): nothing happens. Returns 1 when enqueued.
local entry, tick = KEYS[4], tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', entry, 'tick') or '-1')
if last >= tick then return 0 end
local payload = ARGV[5]
local job = decode(payload)
if not job then return redis.error_reply('cron_push: payload names no queue') end
redis.call('HSET', entry, 'tick', ARGV[3], 'job_id', ARGV[4], 'enqueued_at', tostring(now_seconds()))
enqueue(payload, job)
redis.call('PUBLISH', CHANNEL, 'ready')
return 1
