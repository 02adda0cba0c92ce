-- The retained updates of some keys after a start each, and the horizon,
-- atomically.
--
-- KEYS: counter, epoch, then for each key: its history and top.
-- ARGV: the oldest publication time still retained (POSIX seconds), then
--       each key's start.
--
-- Returns {"ok", epoch, horizon, base, then for each key: its top (0 if
-- unknown) and its history entries numbered above the start, less the
-- leading ones older than the age bound}, or {"noepoch"}. Each entry is
-- {id, {"p", payload, "v", previous number, "r", retained, "t", time}},
-- followed by "k", its keys (JSON) for an update of several keys.
local counter = redis.call('GET', KEYS[1])
local epoch = redis.call('HMGET', KEYS[2], 'id', 'base')
if not counter or not epoch[1] then
  return {'noepoch'}
end
local cutoff = tonumber(ARGV[1])
local result = {'ok', epoch[1], counter, epoch[2] or '0'}
for i = 2, #ARGV do
  local history, top = KEYS[2 * i - 1], KEYS[2 * i]
  local entries = redis.call('XRANGE', history, '(' .. ARGV[i] .. '-0', '+')
  local first = 1
  while entries[first] and tonumber(entries[first][2][8]) < cutoff do
    first = first + 1
  end
  local kept = {}
  for j = first, #entries do
    kept[#kept + 1] = entries[j]
  end
  result[#result + 1] = redis.call('GET', top) or '0'
  result[#result + 1] = kept
end
return result
