-- Give a lease up, if the holder has it.
--
-- KEYS: the lease. ARGV: the holder. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
