-- Add ready jobs to their queues. ARGV[3..] = three entries per job: queue name, priority,
-- payload. The caller routes each job, so the script never decodes a payload; one call serves a
-- single enqueue and a bulk of thousands alike: one INCRBY for the batch's sequence numbers and
-- one ZADD per queue (and slice).
local count = (#ARGV - 2) / 3
if count < 1 then return 0 end
local seq = redis.call('INCRBY', SEQ, count) - count
local batches, order = {}, {}
for i = 3, #ARGV, 3 do
  local queue = ARGV[i]
  local batch = batches[queue]
  if not batch then
    batch = {}
    batches[queue] = batch
    order[#order + 1] = queue
  end
  seq = seq + 1
  batch[#batch + 1] = band(ARGV[i + 1]) + seq
  batch[#batch + 1] = ARGV[i + 2]
end
for _, queue in ipairs(order) do add(queue, batches[queue]) end
redis.call('PUBLISH', CHANNEL, 'ready')
return count
