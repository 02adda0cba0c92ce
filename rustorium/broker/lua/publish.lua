-- Number, store and publish a batch of updates, atomically.
--
-- KEYS: counter, ceiling, epoch, then for each update: its key's history
--       (a stream), top (its last number) and latest value (a hash).
-- ARGV: history size, history age (ms), top age (ms), then for each
--       update: its pub/sub channel, "1" if retained or "0", its data object
--       (JSON, with channel and timestamp), its publication time (POSIX
--       seconds).
--
-- Returns {"ok", epoch, first, ceiling}: the updates are numbered first,
-- first + 1... in order. Returns {"noepoch"} when the counter or epoch is missing (an
-- empty Redis: a new epoch must be seeded), {"ceiling", count} when
-- numbering them would pass the reserved ceiling (nothing is done then).
local count = (#KEYS - 3) / 3
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
for i = 1, count do
  local n = string.format('%d', counter + i)
  local history, top, latest = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local channel, retain, body, at = ARGV[4 * i], ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3]
  local payload = '{"id":"msg_' .. n .. '","type":"update","data":' .. body .. '}'
  local prev = redis.call('GET', top) or '0'
  redis.call('XADD', history, 'MAXLEN', size, n .. '-0',
             'p', payload, 'v', prev, 'r', retain, 't', at)
  redis.call('PEXPIRE', history, history_age)
  redis.call('SET', top, n, 'PX', top_age)
  if retain == '1' then
    redis.call('HSET', latest, 'b', body, 't', at)
  end
  redis.call('PUBLISH', channel, n .. ' ' .. at .. ' ' .. retain .. ' ' .. payload)
end
return {'ok', epoch, counter + 1, ceiling}
