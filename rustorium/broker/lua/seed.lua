-- Start a new epoch, unless another node just did.
--
-- KEYS: counter, ceiling, epoch.
-- ARGV: the run id of this Redis process, the new epoch's id, a ceiling C
--       just reserved in the database, the block B it reserved (numbers
--       C - B + 1 to C are this caller's alone, and every number ever issued
--       is at most C - B), the pub/sub channel announcing epochs.
--
-- Returns the epoch now in force.
local counter = redis.call('GET', KEYS[1])
local epoch = redis.call('HMGET', KEYS[3], 'id', 'run')
if counter and epoch[1] and epoch[2] == ARGV[1] then
  return epoch[1]
end
local base = string.format('%d', tonumber(ARGV[3]) - tonumber(ARGV[4]))
redis.call('SET', KEYS[1], base)
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'id', ARGV[2], 'base', base, 'run', ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[2])
return ARGV[2]
