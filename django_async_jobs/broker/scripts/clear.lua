-- Empty a queue and forget its name at once (api.clear_queue): KEYS[4] = the queue, ARGV[3] =
-- its name. A Lua step rather than MULTI, which a cluster's pipeline refuses. Returns how many
-- jobs went.
local size = redis.call('ZCARD', KEYS[4])
redis.call('UNLINK', KEYS[4])
redis.call('SREM', QUEUES, ARGV[3])
return size
