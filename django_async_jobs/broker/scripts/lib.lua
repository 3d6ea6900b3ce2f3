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

-- The settle step's part. KEYS[13] = PROCESSES, KEYS[14] = p:blocked, KEYS[15..] = the holders and
-- blocked keys of the batch's limited jobs: a payload's keys are used only if they were passed.
local LIMIT_KEYS = nil
local function limit_of(payload)
  if LIMIT_KEYS == nil then
    LIMIT_KEYS = {}
    for i = 15, #KEYS do LIMIT_KEYS[KEYS[i]] = true end
  end
  local job = decode(payload)
  local cc = job and job.cc
  if type(cc) ~= 'table' or type(cc.id) ~= 'string' or not LIMIT_KEYS[cc.h] or not LIMIT_KEYS[cc.b] then
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
