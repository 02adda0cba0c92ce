-- The latest values of some keys, renumbered, and the horizon, atomically.
--
-- KEYS: counter, ceiling, epoch, then each key's latest value (a hash).
--
-- Returns {"ok", epoch, horizon, then for each key: number, payload and
-- publication time, or three nils if it has no latest value}. The horizon is
-- the last number issued, the snapshots' included. Returns {"noepoch"} or
-- {"ceiling", count} like publish.lua.
local counter = tonumber(redis.call('GET', KEYS[1]))
local epoch = redis.call('HGET', KEYS[3], 'id')
if not counter or not epoch then
  return {'noepoch'}
end
local values = {}
local count = 0
for i = 4, #KEYS do
  local value = redis.call('HMGET', KEYS[i], 'b', 't')
  values[i - 3] = value
  if value[1] then
    count = count + 1
  end
end
if count > 0 then
  local ceiling = tonumber(redis.call('GET', KEYS[2])) or 0
  if counter + count > ceiling then
    return {'ceiling', count}
  end
  redis.call('INCRBY', KEYS[1], count)
end
local result = {'ok', epoch, counter + count}
local n = counter
for _, value in ipairs(values) do
  if value[1] then
    n = n + 1
    local number = string.format('%d', n)
    result[#result + 1] = number
    result[#result + 1] = '{"id":"msg_' .. number .. '","type":"update","data":' .. value[1] .. '}'
    result[#result + 1] = value[2]
  else
    result[#result + 1] = false
    result[#result + 1] = false
    result[#result + 1] = false
  end
end
return result
