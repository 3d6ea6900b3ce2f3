-- Add ready jobs to the back of their queues. ARGV[3..] = three entries per job: queue name,
-- priority, payload. The caller routes each job, so the script never decodes a payload; one call
-- serves a bulk of thousands: one ZADD per queue (and slice).
local count = (#ARGV - 2) / 3
if count < 1 then return 0 end
local batches, order = {}, {}
for i = 3, #ARGV, 3 do
  local queue = ARGV[i]
  local batch = batches[queue]
  if not batch then
    batch = {}
    batches[queue] = batch
    order[#order + 1] = queue
  end
  batch[#batch + 1] = band(ARGV[i + 1]) + TAIL
  batch[#batch + 1] = ARGV[i + 2]
end
for _, queue in ipairs(order) do add(queue, batches[queue]) end
redis.call('PUBLISH', CHANNEL, 'ready')
return count
