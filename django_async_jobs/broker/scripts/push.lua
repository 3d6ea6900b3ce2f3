-- Add ready jobs to their queues. ARGV[3..] = payloads; each names its own queue and priority,
-- so one call serves a single enqueue and a bulk of a thousand alike.
local moved = 0
for i = 3, #ARGV do
  local job = decode(ARGV[i])
  if job then
    enqueue(ARGV[i], job)
    moved = moved + 1
  end
end
if moved > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return moved
