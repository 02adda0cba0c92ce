-- Register or renew a node for a while.
--
-- KEYS: the node's announcement, the registry (a sorted set of names by
--       expiry, in Redis's milliseconds).
-- ARGV: the node's name, its announcement (JSON), how long it lasts (ms).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 'ok'
