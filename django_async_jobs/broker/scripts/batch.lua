-- A batch's own steps (batches.py; its jobs' settlements are in settle.lua). KEYS[4] = the
-- index of batches, KEYS[5..] = the batch's key list: the batch, its parent, and so on up.
-- ARGV[3] = op:
--   open  : ARGV[4] = bid, [5] = seconds to keep an unfinished batch, [6] = retention once
--           finished, [7] = description, [8..10] = complete/success/death callbacks (JSON lists
--           of payloads, or ''), [11] = 1 to create it if missing. A jobs() block begins: the
--           batch cannot fire while one is open. Returns 1 (created), 0 (opened) or -1 (gone).
--   add   : ARGV[4] = seconds to keep it, [5..] = job ids joining it. Returns how many joined.
--   close : the same, and the block ends: complete/success fire here when due (an empty batch
--           at once). Returns how many joined.
--   cancel: no callback fires from now on; its jobs are dropped when fetched. Returns 1, or 0
--           when the batch is gone.
--   dead  : ARGV[4] = a member's job id, buried outside the settle step (a poison pill of a
--           recovery): it counts as dead, and death (then complete) fire as the settle step
--           would. A second call for the same member changes nothing. Returns 1.
local op, key = ARGV[3], KEYS[5]
local now = now_seconds()
if op == 'open' then
  local created = 0
  if redis.call('HEXISTS', key, 'created_at') == 0 then
    if ARGV[11] ~= '1' then return -1 end
    local parent = KEYS[6]
    redis.call('HSET', key, 'created_at', now, 'description', ARGV[7], 'retention', ARGV[6],
      'parent', parent or '', 'total', 0, 'pending', 0, 'unran', 0, 'failures', 0, 'dead', 0,
      'open', 0, 'kids', 0, 'kids_ok', 0)
    local events = {'complete', 'success', 'death'}
    for i = 1, 3 do
      if ARGV[7 + i] ~= '' then redis.call('HSET', key, 'cb:' .. events[i], ARGV[7 + i]) end
    end
    redis.call('ZADD', KEYS[4], now, ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
    if parent then
      redis.call('HINCRBY', parent, 'kids', 1)
      redis.call('HINCRBY', parent, 'kids_ok', 1)
    end
    created = 1
  end
  redis.call('HINCRBY', key, 'open', 1)
  redis.call('EXPIRE', key, ARGV[5])
  return created
end
if op == 'cancel' then
  if redis.call('HEXISTS', key, 'created_at') == 0 then return 0 end
  redis.call('HSETNX', key, 'cancelled_at', now)
  return 1
end
if op == 'dead' then
  local keys = {}
  for i = 5, #KEYS do keys[#keys + 1] = KEYS[i] end
  if batch_ended(keys, ARGV[4], 'dead') then redis.call('PUBLISH', CHANNEL, 'ready') end
  return 1
end
if redis.call('HEXISTS', key, 'created_at') == 0 then return 0 end
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
local joined = batch_register(key, ids)
redis.call('EXPIRE', key, ARGV[4])
if op == 'close' then
  redis.call('HINCRBY', key, 'open', -1)
  local keys = {}
  for i = 5, #KEYS do keys[#keys + 1] = KEYS[i] end
  if batch_check(keys, 1, now) then redis.call('PUBLISH', CHANNEL, 'ready') end
end
return joined
