-- Move up to ARGV[4] jobs from the queues named in ARGV[7..], in that order, into the process's
-- in-flight hash (KEYS[4]). They stay there until settled, so a crash never loses them.
-- KEYS[5] = processes zset, KEYS[6] = the process's fetch record (hash: attempt, fields).
-- ARGV[3] = process id, ARGV[5] = this attempt's number, ARGV[6] = the last attempt whose
-- reply the process read.
-- Returns a flat list: field, payload, field, payload ... A field is "<job id>:<fetch number>";
-- an id with other characters than letters, digits and "-_.:" (invalid UTF-8, escapes) is
-- replaced by the payload's SHA-1, so every field is ASCII whatever the payload holds.
--
-- A fetch is idempotent per attempt (see worker/fetcher.py): a reply can be lost after the
-- script ran (a reply timeout, a dropped connection), and a copy sent again can run later, even
-- after a newer attempt. The record keeps the last attempt that ran and the fields it returned:
--   an older attempt       moves nothing (a late copy);
--   the same attempt       returns the same jobs, still in flight, and moves nothing new;
--   a newer attempt        if the process never read the recorded attempt's reply, returns
--                          those jobs first (they are in its hash and no thread has them),
--                          then moves new ones for the slots left.
-- Only a registered process fetches: a late copy that runs after the process stopped or was
-- taken for dead would otherwise put jobs in a hash nobody recovers.
local inflight, record = KEYS[4], KEYS[6]
if not redis.call('ZSCORE', KEYS[5], ARGV[3]) then
  return redis.error_reply('NOPROCESS fetch refused: this worker process is not registered (taken for dead?)')
end
local attempt, received = tonumber(ARGV[5]), tonumber(ARGV[6])
local last = tonumber(redis.call('HGET', record, 'attempt')) or 0
if attempt < last then return {} end
local out, fields = {}, {}
if attempt == last or last > received then
  -- Fields never hold '"' (a job id is matched up to the first one), so it separates them.
  for field in string.gmatch(redis.call('HGET', record, 'fields') or '', '[^"]+') do
    local payload = redis.call('HGET', inflight, field)
    if payload then
      out[#out + 1] = field
      out[#out + 1] = payload
      fields[#fields + 1] = field
    end
  end
  if attempt == last then return out end
end
-- A queue key that cannot be read (not a sorted set) must not fail the script after other
-- queues' jobs moved: the reply would be an error and those jobs in no thread. It is skipped,
-- and its error is the reply only when nothing else came.
local failed = nil
local want = tonumber(ARGV[4]) - #fields
for i = 7, #ARGV do
  if want <= 0 then break end
  local items = redis.pcall('ZPOPMIN', QUEUE_BASE .. ARGV[i], want)
  if items.err then
    failed = items
    items = {}
  end
  for j = 1, #items, 2 do
    local payload = items[j]
    local id = (string.match(payload, '^{"jid":"([%w%-_.:]+)"') or redis.sha1hex(payload))
      .. ':' .. redis.call('INCR', SEQ)
    redis.call('HSET', inflight, id, payload)
    out[#out + 1] = id
    out[#out + 1] = payload
    fields[#fields + 1] = id
    want = want - 1
  end
end
redis.call('HSET', record, 'attempt', attempt, 'fields', table.concat(fields, '"'))
if failed and #out == 0 then return failed end
return out
