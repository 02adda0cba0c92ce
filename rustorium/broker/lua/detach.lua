-- Detach a subscription whose connection closed on this node.
--
-- KEYS: the subscription's record.
-- ARGV: prefix, subscription id, this node, now, resume window, cap.
--
-- Returns the ids forgotten to make room; nothing is done unless the
-- subscription is attached to this node (another node may have claimed it
-- since).
local node = redis.call('HGET', KEYS[1], 'node')
if node ~= ARGV[3] then
  return {}
end
return detach(ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6])
