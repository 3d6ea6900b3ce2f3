-- Relay a batch of outbox rows (outbox.py) into their queues, once each, under the relay's lease.
-- KEYS[4] = the relay's lease, KEYS[5] = relayed ids (zset: job id -> time pushed), KEYS[6] =
-- schedule zset, KEYS[7..] = the enqueue locks of unique jobs in the batch.
-- ARGV[3] = lease holder, ARGV[4] = lease ms, ARGV[5] = seconds a relayed id is kept at most,
-- ARGV[6] = n, ARGV[7..6+n] = ids to forget (their rows are deleted: never relayed again); then
-- 7 per job: job id, queue ('' = a row the relay cannot route: staged as dead), priority,
-- run-at epoch ('' = now), lock (an index into KEYS, 0 = none) and its TTL in ms, payload.
-- A job id seen before is skipped: the rows of a relay that died between this step and their
-- delete are pushed once. Returns {-1} when the lease is not the caller's (nothing is done),
-- else {pushed, skipped, job id, lock holder, ...} with a pair per unique job whose lock is held.
local LEASE, RELAYED, SCHEDULE = KEYS[4], KEYS[5], KEYS[6]
if redis.call('GET', LEASE) ~= ARGV[3] then return {-1} end
redis.call('PEXPIRE', LEASE, ARGV[4])
local now = now_seconds()
redis.call('ZREMRANGEBYSCORE', RELAYED, '-inf', now - tonumber(ARGV[5]))
local first = 7
local last = first + tonumber(ARGV[6]) - 1
for i = first, last, 1000 do
  redis.call('ZREM', RELAYED, unpack(ARGV, i, math.min(i + 999, last)))
end
local ready, conflicts = {}, {}
local pushed, skipped = 0, 0
for i = last + 1, #ARGV, 7 do
  local jid, queue, run_at, lock, payload = ARGV[i], ARGV[i + 1], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 6]
  if redis.call('ZADD', RELAYED, 'NX', now, jid) == 0 then
    skipped = skipped + 1
  else
    local go = true
    if lock > 0 then  -- as lock_push.lua: the lock's own job renews it
      local key = KEYS[lock]
      if not redis.call('SET', key, jid, 'NX', 'PX', ARGV[i + 5]) then
        local holder = redis.call('GET', key)
        if holder and holder ~= jid then
          go = false
          conflicts[#conflicts + 1] = jid
          conflicts[#conflicts + 1] = holder
        else
          redis.call('SET', key, jid, 'PX', ARGV[i + 5])
        end
      end
    end
    if go then
      pushed = pushed + 1
      if queue == '' then
        stage_dead('outbox:' .. jid .. ':' .. tostring(now), jid, payload, 'malformed_payload', now)
      elseif run_at ~= '' then
        redis.call('ZADD', SCHEDULE, tonumber(run_at), payload)
      else
        ready[#ready + 1] = queue
        ready[#ready + 1] = ARGV[i + 2]
        ready[#ready + 1] = payload
      end
    end
  end
end
if push_ready(ready, 1) > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return {pushed, skipped, unpack(conflicts)}
