-- Take a subscription to resume it on a node, if it belongs to the owner.
--
-- KEYS: the subscription's record.
-- ARGV: prefix, subscription id, owner, the claiming node.
--
-- Returns {channel, topics, keys, since, node it was attached to or nil},
-- or nil.
local prefix, id = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'owner', 'channel', 'topics', 'keys', 'since', 'node')
if not f[1] or f[1] ~= ARGV[3] then
  return false
end
local previous = f[6]
if previous then
  redis.call('SREM', prefix .. 'attached:' .. previous, id)
else
  redis.call('ZREM', prefix .. 'detached:' .. f[1], id)
end
redis.call('PERSIST', KEYS[1])
redis.call('HDEL', KEYS[1], 'detached_at')
redis.call('HSET', KEYS[1], 'node', ARGV[4])
redis.call('SADD', prefix .. 'attached:' .. ARGV[4], id)
return {f[2], f[3], f[4], f[5], previous}
