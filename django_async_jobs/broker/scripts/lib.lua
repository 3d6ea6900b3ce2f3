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
