-- The current epoch, if this Redis process made it and still has its
-- counter; false when a new epoch must be seeded (an empty Redis, or one
-- restarted from a dump that may lack the latest numbers).
--
-- KEYS: counter, epoch. ARGV: the run id of this Redis process.
local counter = redis.call('GET', KEYS[1])
local epoch = redis.call('HMGET', KEYS[2], 'id', 'run')
if counter and epoch[1] and epoch[2] == ARGV[1] then
  return epoch[1]
end
return false
