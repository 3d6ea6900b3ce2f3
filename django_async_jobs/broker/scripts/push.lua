-- Add ready jobs to the back of their queues. ARGV[3..] = three entries per job: queue name,
-- priority, payload. The caller routes each job, so the script never decodes a payload; one call
-- serves a bulk of thousands: one ZADD per queue (and slice).
local count = (#ARGV - 2) / 3
if count < 1 then return 0 end
push_ready(ARGV, 3)
redis.call('PUBLISH', CHANNEL, 'ready')
return count
