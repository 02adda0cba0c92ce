-- The live nodes' announcements.
--
-- KEYS: the registry. ARGV: the prefix of announcements.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local result = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('GET', ARGV[1] .. name)
  if info then
    result[#result + 1] = info
  end
end
return result
