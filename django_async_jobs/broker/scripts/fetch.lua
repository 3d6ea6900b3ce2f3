-- Move up to ARGV[3] jobs from the queues named in ARGV[4..], in that order, into the process's
-- in-flight hash (KEYS[4]). They stay there until settled, so a crash never loses them.
-- Returns a flat list: field, payload, field, payload ... A field is "<job id>:<fetch number>";
-- an id with other characters than letters, digits and "-_.:" (invalid UTF-8, escapes) is
-- replaced by the payload's SHA-1, so every field is ASCII whatever the payload holds.
local inflight = KEYS[4]
local want = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  if want <= 0 then break end
  local items = redis.call('ZPOPMIN', QUEUE_BASE .. ARGV[i], want)
  for j = 1, #items, 2 do
    local payload = items[j]
    local id = (string.match(payload, '^{"jid":"([%w%-_.:]+)"') or redis.sha1hex(payload))
      .. ':' .. redis.call('INCR', SEQ)
    redis.call('HSET', inflight, id, payload)
    out[#out + 1] = id
    out[#out + 1] = payload
    want = want - 1
  end
end
return out
