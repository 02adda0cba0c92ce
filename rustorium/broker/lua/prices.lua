-- Accept the ticks whose sequence number is above the last accepted for
-- their market, in order, and publish the accepted ones.
--
-- KEYS: the last sequence number of each market (a hash), the last
--       accepted tick of each market (a hash).
-- ARGV: the channel to publish on, then for each tick: its market's
--       symbol, its sequence number, the tick (JSON).
--
-- Sequence numbers are at most 2^53 - 1, which Lua's numbers hold exactly.
-- Publishes one message, a JSON array of the accepted ticks, if any was.
-- Returns a flag per tick: 1 accepted, 0 stale.
local flags, accepted = {}, {}
for i = 2, #ARGV, 3 do
  local symbol, seq = ARGV[i], tonumber(ARGV[i + 1])
  local last = tonumber(redis.call('HGET', KEYS[1], symbol))
  if last == nil or seq > last then
    redis.call('HSET', KEYS[1], symbol, ARGV[i + 1])
    redis.call('HSET', KEYS[2], symbol, ARGV[i + 2])
    accepted[#accepted + 1] = ARGV[i + 2]
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
if #accepted > 0 then
  redis.call('PUBLISH', ARGV[1], '[' .. table.concat(accepted, ',') .. ']')
end
return flags
