-- Save a running job's progress where a recovery will find it: its payload in the process's
-- in-flight hash (KEYS[4]), field ARGV[3], becomes ARGV[4] (the same payload with its
-- "continuation"). Only while the job is still there: once a stop handed it back or another
-- process recovered it, the payload that went back is the one that counts.
-- Returns 1 when saved, 0 when the job was no longer in flight.
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return 1
