-- Take a lease, or renew it for its holder.
--
-- KEYS: the lease. ARGV: the holder, how long (ms).
-- Returns 1 if the holder has the lease now, 0 if someone else does.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
