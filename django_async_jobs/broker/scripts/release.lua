-- A stopping process hands back everything it still holds (KEYS[4] = its in-flight hash) to the
-- head of the queues and removes itself (KEYS[5] = processes zset, KEYS[6] = its info hash,
-- KEYS[7] = its fetch record, ARGV[3] = its id). Returns how many jobs went back.
local entries = redis.call('HGETALL', KEYS[4])
local now = now_seconds()
local back = 0
for i = 1, #entries, 2 do
  if hand_back(entries[i], entries[i + 1], now, nil) then back = back + 1 end
end
redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[3])
if back > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return back
