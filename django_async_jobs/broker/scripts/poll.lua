-- Move due jobs from the schedule and retry sets (KEYS[4], KEYS[5]) to their queues, at most
-- ARGV[3] per set per call. Returns {moved, seconds until the next due job or -1}, so the
-- poller can sleep exactly that long instead of polling on a fixed beat.
local limit = tonumber(ARGV[3])
local now = now_seconds()
local moved = 0
local next_at = nil
for k = 4, 5 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, limit)
  for _, payload in ipairs(due) do
    redis.call('ZREM', KEYS[k], payload)
    local job = decode(payload)
    if job then
      enqueue(payload, job)
      moved = moved + 1
    else
      stage_dead(redis.sha1hex(payload) .. ':' .. now, '', payload, 'malformed_payload', now)
    end
  end
  local head = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if head[2] then
    local at = tonumber(head[2])
    if next_at == nil or at < next_at then next_at = at end
  end
end
if moved > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
if next_at == nil then return {moved, '-1'} end
return {moved, tostring(math.max(0, next_at - now))}
