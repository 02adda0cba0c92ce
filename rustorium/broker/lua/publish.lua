-- Number, store and publish a batch of updates, atomically.
--
-- KEYS: counter, ceiling, epoch, then for each update: the latest value (a
--       hash) of its key, then for each of its keys (its own first, then
--       the others it belongs to): that key's history (a stream) and top
--       (its last number).
-- ARGV: history size, history age (ms), top age (ms), how many updates,
--       then for each update: how many keys it has (m), "1" if retained or
--       "0", its data object (JSON, with channel and timestamp), its
--       publication time (POSIX seconds), its keys as a JSON array (empty
--       when m is 1), then the pub/sub channels of its m keys.
--
-- An update of several keys takes one number, goes into each key's history
-- (with that key's previous number, and its keys) and is published on each
-- key's channel, the messages back to back so that a node listening to
-- several of them receives them adjacent.
--
-- Returns {"ok", epoch, first, ceiling}: the updates are numbered first,
-- first + 1... in order. Returns {"noepoch"} when the counter or epoch is
-- missing (an empty Redis: a new epoch must be seeded), {"ceiling", count}
-- when numbering them would pass the reserved ceiling (nothing is done
-- then).
local count = tonumber(ARGV[4])
local counter = tonumber(redis.call('GET', KEYS[1]))
local epoch = redis.call('HGET', KEYS[3], 'id')
if not counter or not epoch then
  return {'noepoch'}
end
local ceiling = tonumber(redis.call('GET', KEYS[2])) or 0
if counter + count > ceiling then
  return {'ceiling', count}
end
-- Taken first, so that numbers are never issued twice even if a later
-- command fails.
redis.call('INCRBY', KEYS[1], count)
local size, history_age, top_age = ARGV[1], ARGV[2], ARGV[3]
-- Cursors: the next update's first key and argument.
local k, a = 4, 5
for i = 1, count do
  local n = string.format('%d', counter + i)
  local m, retain, body, at, keys = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
                                    ARGV[a + 4]
  local payload = '{"id":"msg_' .. n .. '","type":"update","data":' .. body .. '}'
  if retain == '1' then
    redis.call('HSET', KEYS[k], 'b', body, 't', at)
  end
  local message
  if m == 1 then
    message = n .. ' ' .. at .. ' ' .. retain .. ' ' .. payload
  else
    message = n .. ' ' .. at .. ' m ' .. keys .. '\n' .. payload
  end
  for j = 1, m do
    local history, top = KEYS[k + 2 * j - 1], KEYS[k + 2 * j]
    local prev = redis.call('GET', top) or '0'
    if m == 1 then
      redis.call('XADD', history, 'MAXLEN', size, n .. '-0',
                 'p', payload, 'v', prev, 'r', retain, 't', at)
    else
      redis.call('XADD', history, 'MAXLEN', size, n .. '-0',
                 'p', payload, 'v', prev, 'r', retain, 't', at, 'k', keys)
    end
    redis.call('PEXPIRE', history, history_age)
    redis.call('SET', top, n, 'PX', top_age)
  end
  for j = 1, m do
    redis.call('PUBLISH', ARGV[a + 4 + j], message)
  end
  k = k + 1 + 2 * m
  a = a + 5 + m
end
return {'ok', epoch, counter + 1, ceiling}
