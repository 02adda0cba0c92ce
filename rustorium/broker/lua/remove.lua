-- Forget a subscription, unless another node has it attached.
--
-- KEYS: the subscription's record.
-- ARGV: prefix, subscription id, this node.
--
-- Returns 1 if it was forgotten, 0 if not.
local prefix, id = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'owner', 'node')
if not f[1] then
  return 0
end
if f[2] then
  if f[2] ~= ARGV[3] then
    return 0
  end
  redis.call('SREM', prefix .. 'attached:' .. f[2], id)
else
  redis.call('ZREM', prefix .. 'detached:' .. f[1], id)
end
redis.call('DEL', KEYS[1])
return 1
