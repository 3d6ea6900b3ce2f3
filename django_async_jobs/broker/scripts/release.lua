-- A stopping process hands back everything it still holds (KEYS[4] = its in-flight hash) to the
-- head of the queues and removes itself (KEYS[5] = processes zset, KEYS[6] = its info hash,
-- KEYS[7] = its fetch record). KEYS[8] = recovery counts. ARGV[3] = its id, ARGV[4] = max
-- recoveries, ARGV[5..] = the fields it knows never started (fetched ahead, still waiting).
-- Those go back as they were; every other job was running, or held by no thread, so it counts
-- one recovery as after a crash, and a job recovered more than max times is a poison pill: a
-- job cut by every stop, or that strands every worker, ends instead of coming back for ever.
-- Returns {jobs handed back, jobs set aside as poison pills}.
local entries = redis.call('HGETALL', KEYS[4])
local max_recoveries = tonumber(ARGV[4])
local unstarted = {}
for i = 5, #ARGV do unstarted[ARGV[i]] = true end
local now = now_seconds()
local back, dead = 0, 0
for i = 1, #entries, 2 do
  local field, payload = entries[i], entries[i + 1]
  local requeued
  if unstarted[field] then
    requeued = hand_back(field, payload, now, nil)
  else
    requeued = recover_job(KEYS[8], field, payload, now, max_recoveries)
  end
  if requeued then back = back + 1 else dead = dead + 1 end
end
redis.call('DEL', KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[3])
if back > 0 then redis.call('PUBLISH', CHANNEL, 'ready') end
return {back, dead}
