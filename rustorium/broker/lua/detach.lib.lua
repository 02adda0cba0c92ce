-- Detach a subscription: keep it resumable for the resume window, at most
-- `cap` detached per owner (the oldest detached go first). Returns the ids
-- forgotten to make room. Prepended to detach.lua and detach_node.lua.
--
-- prefix: the key prefix; id: the subscription id; now: the time of the
-- detach (POSIX seconds); window: the resume window (seconds).
local function detach(prefix, id, now, window, cap)
  local record = prefix .. 'subscription:' .. id
  local fields = redis.call('HMGET', record, 'owner', 'node')
  local owner, node = fields[1], fields[2]
  if not owner then
    return {}
  end
  if node then
    redis.call('SREM', prefix .. 'attached:' .. node, id)
    redis.call('HDEL', record, 'node')
  end
  redis.call('HSET', record, 'detached_at', now)
  local ttl = math.ceil(tonumber(window) * 1000)
  redis.call('PEXPIRE', record, ttl)
  local detached = prefix .. 'detached:' .. owner
  -- Entries whose records have expired.
  redis.call('ZREMRANGEBYSCORE', detached, '-inf', '(' .. (tonumber(now) - tonumber(window)))
  redis.call('ZADD', detached, now, id)
  redis.call('PEXPIRE', detached, ttl)
  local forgotten = {}
  local excess = redis.call('ZCARD', detached) - tonumber(cap)
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', detached, excess)
    for i = 1, #oldest, 2 do
      forgotten[#forgotten + 1] = oldest[i]
      redis.call('DEL', prefix .. 'subscription:' .. oldest[i])
    end
  end
  return forgotten
end
