-- Keep a new subscription, attached to this node.
--
-- KEYS: the subscription's record, this node's set of attached ones.
-- ARGV: subscription id, this node, owner, channel, topics (JSON), keys
--       (JSON), since.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'channel', ARGV[4], 'topics', ARGV[5],
           'keys', ARGV[6], 'since', ARGV[7], 'node', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 'ok'
