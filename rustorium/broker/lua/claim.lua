-- Take subscriptions to resume them on a node, each if it belongs to the
-- owner given with it (the claims of one reactor turn, in one call).
--
-- KEYS: the subscriptions' records.
-- ARGV: prefix, the claiming node, then for each record: its subscription
--       id and the owner.
--
-- Returns, for each record in order, {channel, topics, keys, since, node it
-- was attached to or nil}, or nil.
local prefix, node = ARGV[1], ARGV[2]
local results = {}
for i = 1, #KEYS do
  local id, owner = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local f = redis.call('HMGET', KEYS[i], 'owner', 'channel', 'topics', 'keys', 'since', 'node')
  if not f[1] or f[1] ~= owner then
    results[i] = false
  else
    local previous = f[6]
    if previous then
      redis.call('SREM', prefix .. 'attached:' .. previous, id)
    else
      redis.call('ZREM', prefix .. 'detached:' .. f[1], id)
    end
    redis.call('PERSIST', KEYS[i])
    redis.call('HDEL', KEYS[i], 'detached_at')
    redis.call('HSET', KEYS[i], 'node', node)
    redis.call('SADD', prefix .. 'attached:' .. node, id)
    results[i] = {f[2], f[3], f[4], f[5], previous}
  end
end
return results
