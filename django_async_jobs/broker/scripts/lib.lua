-- Shared prelude, prepended to every script that moves jobs into queues or to the dead stage.
-- Convention: KEYS[1] = known-queues set, KEYS[2] = sequence, KEYS[3] = dead stage hash;
-- ARGV[1] = queue key base, ARGV[2] = notify channel. A script's own keys and args follow.
local QUEUES, SEQ, DEAD = KEYS[1], KEYS[2], KEYS[3]
local QUEUE_BASE, CHANNEL = ARGV[1], ARGV[2]
-- Higher priority sorts first. A job that joins the back of its queue is scored band + TAIL;
-- equal scores sort by member, which starts with the job id, and ids sort in enqueue order
-- (serialization.new_job_id), so a band stays first in, first out. client.score() computes the
-- same for the pushes made from Python. 201 bands of 2^45 stay below 2^53, where doubles are exact.
local BAND = 35184372088832
local TAIL = 17592186044416

-- In-flight fields are "<job id>:<fetch number>": unique per fetch, so a job that re-enqueued
-- itself (retry_job) and is fetched again never shares a field with the running copy.
local function job_key(field)
  return string.match(field, '^(.+):%d+$') or field
end

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function band(priority)
  local p = tonumber(priority) or 0
  if p ~= p then p = 0 end  -- NaN: a NaN score would make ZADD, and the whole script, fail
  if p > 100 then p = 100 elseif p < -100 then p = -100 end
  return (100 - p) * BAND
end

-- A payload this script can route, or nil when it is not a JSON object naming a queue.
local function decode(payload)
  local ok, job = pcall(cjson.decode, payload)
  if ok and type(job) == 'table' and type(job.queue) == 'string' and job.queue ~= '' then
    return job
  end
  return nil
end

-- A job is added at the back of its band; with head_rank (its fetch number) it goes before
-- every job of its band that was never fetched, and among jobs handed back, in the order they
-- were fetched: a job handed back keeps its turn. The head's 2^44 below the band stays above
-- the band before it unless 1.7e13 jobs were fetched.
local HEAD = 17592186044416

-- ZADD score/payload pairs to a queue, a slice at a time (unpack has a stack limit), and record
-- the queue's name.
local function add(queue, pairs)
  local key = QUEUE_BASE .. queue
  for i = 1, #pairs, 2000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
  redis.call('SADD', QUEUES, queue)
end

-- Add ready jobs to the back of their queues: list[first..] holds three entries a job (queue
-- name, priority, payload). One ZADD per queue (and slice), however many jobs: a bulk of
-- thousands costs a few calls. Returns how many queues were pushed to.
local function push_ready(list, first)
  local batches, order = {}, {}
  for i = first, #list, 3 do
    local queue = list[i]
    local batch = batches[queue]
    if not batch then
      batch = {}
      batches[queue] = batch
      order[#order + 1] = queue
    end
    batch[#batch + 1] = band(list[i + 1]) + TAIL
    batch[#batch + 1] = list[i + 2]
  end
  for _, queue in ipairs(order) do add(queue, batches[queue]) end
  return #order
end

local function enqueue(payload, job, head_rank)
  local offset
  if head_rank then offset = head_rank - HEAD else offset = TAIL end
  add(job.queue, {band(job.priority) + offset, payload})
end

local function stage_dead(dead_id, job_id, payload, reason, now)
  redis.call('HSET', DEAD, dead_id, cjson.encode({
    dead_id = dead_id, job_id = job_id, payload = payload, reason = reason, died_at = now,
  }))
end

-- Unique jobs (locks.py): a payload's lock = {mode, key = enqueue lock, run = run lock}. Only
-- the holder deletes a lock: the job id holds the enqueue lock, the in-flight field the run lock.
local function unlock(key, token)
  if type(key) == 'string' and redis.call('GET', key) == token then redis.call('DEL', key) end
end

-- A job leaving its process drops its run lock; when it is done (finished or dead) its enqueue
-- lock goes too, except until_expired's, which only the TTL ends. A job handed back keeps its
-- enqueue lock: the lock passes to the recovered job.
local function release_locks(field, job, done)
  local lock = job.lock
  if type(lock) ~= 'table' then return end
  unlock(lock.run, field)
  if done and lock.mode ~= 'until_expired' then unlock(lock.key, job.jid) end
end

-- Put a fetched job back at the head of its queue, or stage it as dead: with dead_reason, or
-- when the payload cannot be routed at all. Returns true when the job went back to a queue.
local function hand_back(field, payload, now, dead_reason)
  local job = decode(payload)
  if job then release_locks(field, job, dead_reason ~= nil) end
  if job and not dead_reason then
    enqueue(payload, job, tonumber(string.match(field, ':(%d+)$')) or 0)
    return true
  end
  stage_dead(field .. ':' .. tostring(now), job_key(field), payload, job and dead_reason or 'malformed_payload', now)
  return false
end

-- Hand back a job its process lost (the process died, stopped in the middle of it, or no thread
-- of it held the job), counting one recovery per job id in RECOVERIES; a job recovered more than
-- max_recoveries times is a poison pill and goes to the dead stage instead. Returns true when
-- the job went back to a queue.
local function recover_job(recoveries, field, payload, now, max_recoveries)
  local key = job_key(field)
  local reason = nil
  if redis.call('HINCRBY', recoveries, key, 1) > max_recoveries then reason = 'poison_pill' end
  if hand_back(field, payload, now, reason) then return true end
  redis.call('HDEL', recoveries, key)
  return false
end

-- Concurrency limits (flow.py). A limit's holders hash (p:concurrency:<id>) maps a running job's
-- in-flight field to "<expiry ms> <process id>", or "@<job id>" (a place kept for a job moved
-- from the blocked list to its queue) to "<expiry ms> -". A holder counts while its time is not
-- up and its process is registered in PROCESSES: a process taken for dead, or stopped, frees its
-- places at once. Its blocked jobs wait in p:concurrency:<id>:blocked (scored by when they were
-- blocked); the ids of limits with blocked jobs are in p:blocked (scored by when to look again).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- How many holders of a limit still count, after dropping those that no longer do.
local function live_holders(holders, processes, now)
  local entries = redis.call('HGETALL', holders)
  local live = 0
  for i = 1, #entries, 2 do
    local expiry, pid = string.match(entries[i + 1], '^(%S+) (%S+)$')
    expiry = tonumber(expiry)
    if expiry == nil or expiry <= now or (pid ~= '-' and not redis.call('ZSCORE', processes, pid)) then
      redis.call('HDEL', holders, entries[i])
    else
      live = live + 1
    end
  end
  return live
end

-- Keep a place of the limit for job id jid until it starts, for its limit's duration (ms).
local function reserve(holders, jid, ttl, now)
  ttl = tonumber(ttl) or 0
  if ttl ~= ttl or ttl < 1000 then ttl = 1000 end
  redis.call('HSET', holders, '@' .. tostring(jid), tostring(now + ttl) .. ' -')
  if redis.call('PTTL', holders) < ttl then redis.call('PEXPIRE', holders, ttl) end
end

-- Move blocked jobs to their queues while the limit has room, keeping a place for each so no
-- job enqueued later takes it first. Returns how many moved.
local function unblock(holders, blocked, processes, index, id, to, now)
  local moved = 0
  local room = to - live_holders(holders, processes, now)
  while room > 0 do
    local popped = redis.call('ZPOPMIN', blocked)
    if #popped == 0 then break end
    local job = decode(popped[1])
    if job then
      reserve(holders, job.jid, type(job.cc) == 'table' and job.cc.ttl, now)
      enqueue(popped[1], job)
      moved = moved + 1
      room = room - 1
    else
      stage_dead(redis.sha1hex(popped[1]) .. ':' .. now, '', popped[1], 'malformed_payload', now / 1000)
    end
  end
  if redis.call('ZCARD', blocked) == 0 then redis.call('ZREM', index, id) end
  return moved
end

-- The settle step's part. KEYS[13] = PROCESSES, KEYS[14] = p:blocked, KEYS[15..] = the keys the
-- settled jobs' payloads name (their concurrency limits' holders and blocked keys, their
-- batches'): a payload's keys are used only if they were passed.
local PASSED = nil
local function passed(key)
  if PASSED == nil then
    PASSED = {}
    for i = 15, #KEYS do PASSED[KEYS[i]] = true end
  end
  return PASSED[key] == true
end

local function limit_of(payload)
  local job = decode(payload)
  local cc = job and job.cc
  if type(cc) ~= 'table' or type(cc.id) ~= 'string' or not passed(cc.h) or not passed(cc.b) then
    return nil, job
  end
  local to = tonumber(cc.to)
  if to == nil or to ~= to or to < 1 then return nil, job end
  return cc, job
end

-- A limited job is done with its place (finished, failed, put back, expired before it started):
-- free it, or the one kept for it, and move blocked jobs to their queues for the room there is
-- now. Returns true when a job moved.
local function concurrency_release(field, payload)
  local cc, job = limit_of(payload)
  if not cc then return false end
  redis.call('HDEL', cc.h, field, '@' .. tostring(job.jid))
  return unblock(cc.h, cc.b, KEYS[13], KEYS[14], cc.id, tonumber(cc.to), now_ms()) > 0
end

-- A limited job found its limit full when it was about to start: into the blocked list. If a
-- place came free meanwhile, it goes back to the head of its queue instead, with that place
-- kept for it. Returns true when it went to a queue.
local function concurrency_block(field, payload)
  local cc, job = limit_of(payload)
  local now = now_ms()
  if not cc then
    return hand_back(field, payload, now / 1000, nil)
  end
  if live_holders(cc.h, KEYS[13], now) < tonumber(cc.to) then
    reserve(cc.h, job.jid, cc.ttl, now)
    return hand_back(field, payload, now / 1000, nil)
  end
  redis.call('ZADD', cc.b, now, payload)
  redis.call('ZADD', KEYS[14], 'NX', now, cc.id)
  return false
end

-- Batches (batches.py). A batch is one hash: counters (total, pending = members not succeeded,
-- unran = members not run yet, failures, dead = members dead now, open = jobs() blocks not
-- closed, kids / kids_ok = child batches not complete / not succeeded), its callbacks
-- (cb:<event>: a JSON list of payloads), when each event happened (<event>_at) and whether its
-- callbacks were pushed (fired:<event>), and one field per member: j:<job id> -> its state,
-- q (not run yet), r (ran, failed), d (dead), s (succeeded or discarded). A member settled
-- before its registration reached Redis (jobs are registered after their push, by 1,000) keeps
-- an upper-case state and counts only once registered: a job whose registration never came
-- (its enqueuer was killed) is no member. A batch's key list is the batch, then its parent,
-- and so on up.
local function batch_int(value)
  return tonumber(value) or 0
end

-- The event's callbacks to their queues, unless the batch or one above it was cancelled.
-- Returns true when a job was pushed.
local function batch_fire(keys, i, event, now)
  redis.call('HSET', keys[i], event .. '_at', now)
  for j = i, #keys do
    if redis.call('HEXISTS', keys[j], 'cancelled_at') == 1 then return false end
  end
  local pushed = false
  local list = redis.call('HGET', keys[i], 'cb:' .. event)
  if list then
    local ok, payloads = pcall(cjson.decode, list)
    if ok and type(payloads) == 'table' then
      for _, payload in ipairs(payloads) do
        local job = type(payload) == 'string' and decode(payload)
        if job then
          enqueue(payload, job)
          pushed = true
        end
      end
    end
    redis.call('HSET', keys[i], 'fired:' .. event, now)
  end
  return pushed
end

-- Fire complete and success where they are due, from batch keys[i] up through its parents;
-- a batch done with (complete, and succeeded or only dead members left) expires after its
-- retention. Returns true when a callback was pushed.
local function batch_check(keys, i, now)
  local pushed = false
  while keys[i] do
    local key, parent = keys[i], keys[i + 1]
    local h = redis.call('HMGET', key, 'created_at', 'open', 'unran', 'pending', 'kids', 'kids_ok',
      'complete_at', 'success_at', 'dead', 'retention')
    if not h[1] then return pushed end
    local open, pending = batch_int(h[2]), batch_int(h[4])
    local complete, success = h[7], h[8]
    local moved = false
    if not complete and open <= 0 and batch_int(h[3]) <= 0 and batch_int(h[5]) <= 0 then
      complete = now
      if batch_fire(keys, i, 'complete', now) then pushed = true end
      if parent then redis.call('HINCRBY', parent, 'kids', -1) moved = true end
    end
    if complete and not success and open <= 0 and pending <= 0 and batch_int(h[6]) <= 0 then
      success = now
      if batch_fire(keys, i, 'success', now) then pushed = true end
      if parent then redis.call('HINCRBY', parent, 'kids_ok', -1) moved = true end
    end
    if complete and (success or pending <= batch_int(h[9])) then
      redis.call('EXPIRE', key, batch_int(h[10]))
    end
    if not moved then return pushed end
    i = i + 1
  end
  return pushed
end

-- Register job ids as members of batch key (their first enqueue; a job id already a member
-- counts once). Returns how many joined.
local function batch_register(key, ids)
  local total, pending, unran = 0, 0, 0
  for _, jid in ipairs(ids) do
    local field = 'j:' .. jid
    local state = 'q'
    if redis.call('HSETNX', key, field, 'q') == 1 then
      total, pending, unran = total + 1, pending + 1, unran + 1
    else
      state = redis.call('HGET', key, field)
    end
    if state ~= string.lower(state) then
      state = string.lower(state)
      redis.call('HSET', key, field, state)
      total = total + 1
      if state ~= 's' then pending = pending + 1 end
    end
  end
  if total > 0 then
    redis.call('HINCRBY', key, 'total', total)
    redis.call('HINCRBY', key, 'pending', pending)
    redis.call('HINCRBY', key, 'unran', unran)
  end
  return total
end

-- A member's execution ended: event 'ok' (succeeded, discarded, dropped), 'fail' (into its
-- retries) or 'dead'. Returns whether the member died now, and whether the batch may be due
-- (a counter the callbacks wait for reached zero, or a death may have finished it): most
-- settlements of a big batch then skip batch_check.
local function batch_member(key, jid, event)
  local field = 'j:' .. jid
  local state = redis.call('HGET', key, field)
  local registered = state and state == string.lower(state)
  local was = state and string.lower(state) or 'q'
  if was == 's' then return false, false end  -- done already: a duplicate run changes nothing
  local to = 's'
  if event == 'fail' then to = 'r' elseif event == 'dead' then to = 'd' end
  if to ~= 's' and not (to == 'd' and was == 'd') then redis.call('HINCRBY', key, 'failures', 1) end
  if was == 'd' and to ~= 'd' then redis.call('HINCRBY', key, 'dead', -1) end
  if to == 'd' and was ~= 'd' then redis.call('HINCRBY', key, 'dead', 1) end
  local died, due = to == 'd' and was ~= 'd', false
  if registered then
    if was == 'q' and redis.call('HINCRBY', key, 'unran', -1) <= 0 then due = true end
    if to == 's' and redis.call('HINCRBY', key, 'pending', -1) <= 0 then due = true end
    redis.call('HSET', key, field, to)
  else
    redis.call('HSET', key, field, string.upper(to))
  end
  return died, due or died
end

-- A member of batch keys[1] (keys: the batch, then its parents) ended with event (see
-- batch_member): its counters move, and death, complete and success fire where due. Returns
-- true when a callback was pushed.
local function batch_ended(keys, jid, event)
  if redis.call('HEXISTS', keys[1], 'created_at') == 0 then return false end  -- expired, or never made
  local pushed = false
  local died, due = batch_member(keys[1], jid, event)
  if not due then return false end
  local now = now_seconds()
  if died then
    for i = 1, #keys do
      if redis.call('HEXISTS', keys[i], 'death_at') == 0 and batch_fire(keys, i, 'death', now) then
        pushed = true
      end
    end
  end
  if batch_check(keys, 1, now) then pushed = true end
  return pushed
end

-- The settle step's part: a job of a batch (its payload's "batch": the batch's key list) ended
-- with op. The keys are used only if they were passed (passed(key)). Returns true when a
-- callback was pushed.
local function batch_settled(job, op)
  local keys = job and job.batch
  if type(keys) ~= 'table' or #keys == 0 or type(job.jid) ~= 'string' then return false end
  for _, key in ipairs(keys) do
    if type(key) ~= 'string' or not passed(key) then return false end
  end
  local event = 'ok'
  if op == 'retry' then event = 'fail' elseif op == 'dead' then event = 'dead' end
  return batch_ended(keys, job.jid, event)
end

