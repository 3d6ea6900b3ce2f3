-- Find a job by its id in one sorted set (a queue, the schedule, the retry set, a limit's
-- blocked jobs): the dashboard's page of a job known by its id alone, and api.cancel. A call
-- reads a bounded part of the set, so a large set never holds Redis for long.
-- KEYS[4] = the set; ARGV[3] = job id, ARGV[4] = where to go on ('' = from the start, else the
-- highest score read so far: every member up to it was looked at), ARGV[5] = about how many
-- members this call may read.
-- Returns {where to go on ('' once the whole set was read), member, score, member, score, ...}:
-- the members that may be the job; the caller checks their ids.
--
-- Members of one score are ordered by payload, and a payload starts with its job id
-- ('{"jid":"<id>"', serialization.py): a run of one score (a queue's priority band, jobs
-- scheduled for the same second) is bisected, a few reads however long it is. The rest (the
-- schedule's and the retries' times, jobs handed back) is read a slice at a time, each member
-- looked at for the quoted id anywhere in it.
local key, jid, budget = KEYS[4], ARGV[3], tonumber(ARGV[5])
local head = '{"jid":"' .. jid .. '"'
local quoted = '"' .. jid .. '"'
local SLICE = 100
local found = {''}  -- [1]: where to go on, set at the end

local function keep(member, score)
  found[#found + 1] = member
  found[#found + 1] = score
end

-- Whether member sorts before head, byte by byte as Redis orders members (Lua's < follows the
-- locale's collation).
local function before_head(member)
  for i = 1, #head do
    local a, b = string.byte(member, i), string.byte(head, i)
    if a == nil then return true end
    if a ~= b then return a < b end
  end
  return false
end

-- The members of the run of score that start with head: the first one not before head, by
-- bisection of the run's ranks, and those after it that start with head too.
local function bisect(score)
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local stop = lo + redis.call('ZCOUNT', key, score, score)
  local hi = stop
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if before_head(redis.call('ZRANGE', key, mid, mid)[1]) then lo = mid + 1 else hi = mid end
  end
  while lo < stop do
    local member = redis.call('ZRANGE', key, lo, lo)[1]
    if string.sub(member, 1, #head) ~= head then break end
    keep(member, score)
    lo = lo + 1
  end
end

local from = '-inf'
if ARGV[4] ~= '' then from = '(' .. ARGV[4] end
while budget > 0 do
  local slice = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', 0, SLICE)
  local n = #slice
  if n < 2 * SLICE then  -- the end of the set
    for i = 1, n, 2 do
      if string.find(slice[i], quoted, 1, true) then keep(slice[i], slice[i + 1]) end
    end
    return found
  end
  local last = slice[n]
  if slice[2] == last then
    bisect(last)  -- a run of one score, a slice long at least
  else
    -- Up to the run of the slice's last score, which may go on past the slice: the next read
    -- starts with that run.
    local upto = n - 1
    while slice[upto + 1] == last do upto = upto - 2 end
    for i = 1, upto, 2 do
      if string.find(slice[i], quoted, 1, true) then keep(slice[i], slice[i + 1]) end
    end
    last = slice[upto + 1]
  end
  from = '(' .. last
  budget = budget - SLICE
end
found[1] = string.sub(from, 2)
return found
