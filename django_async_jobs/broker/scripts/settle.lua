-- Finish a batch of fetched jobs in one round trip. KEYS[4] = in-flight hash, KEYS[5] = recovery
-- counts, KEYS[6] = retry set, KEYS[7..10] = processed total/day, failed total/day, KEYS[11] =
-- the schedule, KEYS[12] = expired total; KEYS[13..] only when the batch holds jobs with a
-- concurrency limit or of a batch: the processes zset, p:blocked, and the keys their payloads
-- name (lib.lua). A job of a batch counts there in this same step (batch_settled): ack and
-- expire as done, retry as a failure that ran, dead as a death; its callbacks are pushed here
-- too, so a batch's counters and callbacks move exactly once with the job's settlement.
-- ARGV[3] = daily counter TTL, then groups of five: op, field, a, b, failed (1 when the job
-- raised). Only settlements that apply are counted, so a job recovered elsewhere meanwhile is
-- not counted twice.
--   ack     : done (success, discard, or recorded elsewhere)
--   retry   : a = run-at score, b = payload for the retry set
--   dead    : a = dead id, b = staged record (JSON)
--   requeue : back to the head of its queue, untouched (a stopping worker's unfinished job)
--   reschedule: a = run-at (0: now), b = the payload to put back: into the schedule (KEYS[11]),
--             or at the back of its queue when due now. Not a failure and not processed (a
--             rate limit's wait, a resumable job's checkpoint); its enqueue lock is kept.
--   expire  : done without running: not started by its deadline (flow.py). Counted as expired
--             (KEYS[12]), not as processed.
--   block   : not started, its concurrency limit full: into the limit's blocked jobs (or back to
--             the head of its queue if a place came free meanwhile). Not processed.
-- A job with a concurrency limit ("cc" in its payload) that leaves otherwise frees its place,
-- and as many blocked jobs of its limit as there is room for go to their queues.
-- A follow-up happens only if the job was still ours: when another process already recovered
-- it, a retry or dead record would duplicate it.
local inflight, recoveries, retry = KEYS[4], KEYS[5], KEYS[6]
local limits = #KEYS > 12
local requeued = false
local processed, failed, expired = 0, 0, 0
for i = 4, #ARGV, 5 do
  local op, field, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local payload = redis.call('HGET', inflight, field)
  if payload then
    redis.call('HDEL', inflight, field)
    if limits and op ~= 'requeue' and op ~= 'block' and string.find(payload, '"cc":', 1, true) then
      if concurrency_release(field, payload) then requeued = true end
    end
    if op == 'block' then
      if concurrency_block(field, payload) then requeued = true end
    elseif op == 'requeue' then
      if hand_back(field, payload, now_seconds(), nil) then requeued = true end
    elseif op == 'reschedule' then
      redis.call('HDEL', recoveries, job_key(field))
      local job = decode(b)
      if job then release_locks(field, job, false) end
      local at = tonumber(a) or 0
      if at ~= at then at = 0 end
      if job and at <= now_seconds() then
        enqueue(b, job)
        requeued = true
      else
        redis.call('ZADD', KEYS[11], at, b)  -- the poller moves it, or stages it dead if it names no queue
      end
    else
      if op == 'expire' then expired = expired + 1 else processed = processed + 1 end
      if ARGV[i + 4] == '1' then failed = failed + 1 end
      redis.call('HDEL', recoveries, job_key(field))
      if string.find(payload, '"lock":', 1, true) then
        local job = decode(payload)
        if job then release_locks(field, job, op ~= 'retry') end
      end
      if limits and string.find(payload, '"batch":', 1, true) then
        if batch_settled(decode(payload), op) then requeued = true end
      end
      if op == 'retry' then
        local at = tonumber(a)
        if at == nil or at ~= at then at = 0 end  -- a run-at ZADD refuses would fail the batch
        redis.call('ZADD', retry, at, b)
      elseif op == 'dead' then
        redis.call('HSET', DEAD, a, b)
      end
    end
  end
end
local ttl = tonumber(ARGV[3])
if processed > 0 then
  redis.call('INCRBY', KEYS[7], processed)
  redis.call('INCRBY', KEYS[8], processed)
  redis.call('EXPIRE', KEYS[8], ttl)
end
if failed > 0 then
  redis.call('INCRBY', KEYS[9], failed)
  redis.call('INCRBY', KEYS[10], failed)
  redis.call('EXPIRE', KEYS[10], ttl)
end
if expired > 0 then redis.call('INCRBY', KEYS[12], expired) end
if requeued then redis.call('PUBLISH', CHANNEL, 'ready') end
return 1
