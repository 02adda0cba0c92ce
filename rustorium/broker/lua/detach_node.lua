-- Detach every subscription attached to a node (one that died).
--
-- KEYS: the node's set of attached subscriptions.
-- ARGV: prefix, now, resume window, cap.
--
-- Returns how many were detached.
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do
  detach(ARGV[1], id, ARGV[2], ARGV[3], ARGV[4])
end
redis.call('DEL', KEYS[1])
return #ids
