-- Raise the ceiling to a block just reserved in the database.
--
-- KEYS: counter, ceiling, epoch.
-- ARGV: the reserved ceiling C and block B (numbers C - B + 1 to C are this
--       caller's alone).
--
-- The counter jumps to the block's start: numbers between the old ceiling
-- and the block may belong to another reservation. A block below the
-- current ceiling is dropped. Returns "ok", or "noepoch".
local counter = tonumber(redis.call('GET', KEYS[1]))
if not counter or not redis.call('HGET', KEYS[3], 'id') then
  return 'noepoch'
end
local ceiling = tonumber(redis.call('GET', KEYS[2])) or 0
local new = tonumber(ARGV[1])
if new > ceiling then
  local low = new - tonumber(ARGV[2])
  if counter < low then
    redis.call('SET', KEYS[1], string.format('%d', low))
  end
  redis.call('SET', KEYS[2], ARGV[1])
end
return 'ok'
