-- Raise the ceiling to a block just reserved in the database.
--
-- KEYS: counter, ceiling, epoch.
-- ARGV: the reserved ceiling C and block B (numbers C - B + 1 to C are this
--       caller's alone).
--
-- A block right above the ceiling extends it. Above a gap, the counter jumps
-- to the block's start: numbers in the gap were reserved by others, and may
-- have been issued in an earlier epoch (a node seeding with a block reserved
-- before another node's). A block below the ceiling is dropped. Returns
-- "ok", or "noepoch".
local counter = tonumber(redis.call('GET', KEYS[1]))
if not counter or not redis.call('HGET', KEYS[3], 'id') then
  return 'noepoch'
end
local ceiling = tonumber(redis.call('GET', KEYS[2])) or 0
local new = tonumber(ARGV[1])
if new > ceiling then
  local low = new - tonumber(ARGV[2])
  if low > ceiling then
    redis.call('SET', KEYS[1], string.format('%d', math.max(counter, low)))
  end
  redis.call('SET', KEYS[2], ARGV[1])
end
return 'ok'
