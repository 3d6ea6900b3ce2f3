-- Act on jobs picked from a sorted set (KEYS[4]: a queue, the schedule or the retry set) by the
-- dashboard or the `jobs` command. ARGV[3] = op, then pairs of (score, job id) from ARGV[4].
-- A pair names a job without sending its payload back: the score narrows the set to one or a
-- few members, the id picks among them (payloads without an id of letters, digits and "-_.:"
-- go by their SHA-1, as api.identity computes it).
--   delete : remove the job
--   enqueue: move it to the tail of its queue now ("run now"), stamped "moved_at" (right after
--            its "jid", replacing an earlier stamp there): the queue's latency counts from here
--   kill   : move it to the dead stage with reason "killed", keeping its last error and traceback
-- A unique job deleted or killed is done, so its enqueue lock goes as when it finishes (lib.lua);
-- one run now keeps it: the job is still to run.
-- A job already gone (run, moved or deleted by someone else meanwhile) is skipped.
-- Returns how many jobs were acted on.
local source, op = KEYS[4], ARGV[3]
local now = now_seconds()
local done = 0
local enqueued = false

local function identity(member)
  local jid = string.match(member, '^{"jid":"([%w%-_.:]+)"')
  if jid then return jid, nil end
  local ok, job = pcall(cjson.decode, member)
  if ok and type(job) == 'table' then
    if type(job.jid) == 'string' and string.match(job.jid, '^[%w%-_.:]+$') then return job.jid, job end
    return redis.sha1hex(member), job
  end
  return redis.sha1hex(member), nil
end

local function finished(member, job)
  if not string.find(member, '"lock":', 1, true) then return end
  if job == nil then
    local ok, decoded = pcall(cjson.decode, member)
    if not ok or type(decoded) ~= 'table' then return end
    job = decoded
  end
  release_locks('', job, true)  -- '' holds no run lock: a job in a set is not running
end

local function kill(member, jid, job)
  if job == nil then
    local ok, decoded = pcall(cjson.decode, member)
    if ok and type(decoded) == 'table' then job = decoded else job = {} end
  end
  local record = {
    dead_id = redis.sha1hex(member .. ':' .. tostring(now)), job_id = jid, payload = member,
    reason = 'killed', died_at = now,
  }
  if type(job.error_class) == 'string' then record.error_class = job.error_class end
  if type(job.error_message) == 'string' then record.error_message = job.error_message end
  if type(job.traceback) == 'string' then record.traceback = job.traceback end
  -- cjson reads NaN and 1e999 but cannot write them back: the record would fail, and the job,
  -- already removed, would be lost.
  local executions = job.executions
  if type(executions) == 'number' and executions == executions and math.abs(executions) < math.huge then
    record.executions = executions
  end
  redis.call('HSET', DEAD, record.dead_id, cjson.encode(record))
end

local function stamped(member)
  local head = string.match(member, '^{"jid":"[%w%-_.:]+",')
  if not head then return member end
  local rest = string.gsub(string.sub(member, #head + 1), '^"moved_at":[%d.]+,', '', 1)
  return head .. '"moved_at":' .. string.format('%.3f', now) .. ',' .. rest
end

for i = 4, #ARGV - 1, 2 do
  local score, wanted = ARGV[i], ARGV[i + 1]
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', source, score, score)) do
    local jid, job = identity(member)
    if jid == wanted then
      redis.call('ZREM', source, member)
      if op == 'enqueue' then
        local routable = decode(member)
        if routable then
          enqueue(stamped(member), routable)
          enqueued = true
        else
          stage_dead(wanted .. ':' .. tostring(now), wanted, member, 'malformed_payload', now)
        end
      elseif op == 'kill' then
        kill(member, jid, job)
        finished(member, job)
      else
        finished(member, job)
      end
      done = done + 1
      break
    end
  end
end
if enqueued then redis.call('PUBLISH', CHANNEL, 'ready') end
return done
