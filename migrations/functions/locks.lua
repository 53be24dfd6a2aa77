
--[[ Locks. Per namespace (same `{ns}` slot as its data, so a write can check a fencing token
atomically): lock:<name> hash {owner, token, fencing, acquired_at, expires_at} with PEXPIREAT,
and the `fence` hash: name -> last fencing token granted (never expires, so tokens keep
increasing across expiries and restarts), and the `locks` sorted set: name -> expires_at of
every lock granted and not released (the listing reads the ones not yet expired; each acquire
drops the expired ones). A release PUBLISHes on ARGV channel to wake waiters.
]]

-- lock_acquire: take the lock if nobody holds it; a new fencing token each time.
-- KEYS (3): lock fence locks
-- ARGV (4): name, owner, token, ttl_ms
-- Returns: {'ok', fencing, expires_at} | {'held', owner, expires_at, ms left}
local function lock_acquire(keys, args)
  local now = now_ms()
  local cur = redis.call('HMGET', keys[1], 'owner', 'expires_at')
  -- Held: also say how long it has left on Redis' clock, so waiters need not trust their own.
  if cur[1] then return {'held', cur[1], cur[2], math.max(tonumber(cur[2]) - now, 0)} end
  local f = redis.call('HINCRBY', keys[2], args[1], 1)
  local exp = now + tonumber(args[4])
  redis.call('HSET', keys[1], 'owner', args[2], 'token', args[3], 'fencing', f,
             'acquired_at', now, 'expires_at', exp)
  redis.call('PEXPIREAT', keys[1], exp)
  redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', now)
  redis.call('ZADD', keys[3], exp, args[1])
  return {'ok', f, exp}
end

-- lock_renew: extend the holder's lock.
-- KEYS (2): lock locks
-- ARGV (3): token, ttl_ms, name
-- Returns: {'ok', fencing, expires_at} | {'none'} | {'held', owner}
local function lock_renew(keys, args)
  local cur = redis.call('HMGET', keys[1], 'token', 'owner', 'fencing')
  if not cur[1] then return {'none'} end
  if cur[1] ~= args[1] then return {'held', cur[2]} end
  local exp = now_ms() + tonumber(args[2])
  redis.call('HSET', keys[1], 'expires_at', exp)
  redis.call('PEXPIREAT', keys[1], exp)
  redis.call('ZADD', keys[2], exp, args[3])
  return {'ok', tonumber(cur[3]), exp}
end

-- lock_release: the holder lets go; waiters are woken on `channel`.
-- KEYS (2): lock locks
-- ARGV (3): token, channel, name
-- Returns: {'ok', owner} | {'none'} | {'held', owner}
local function lock_release(keys, args)
  local cur = redis.call('HMGET', keys[1], 'token', 'owner')
  if not cur[1] then return {'none'} end
  if cur[1] ~= args[1] then return {'held', cur[2]} end
  redis.call('DEL', keys[1])
  redis.call('ZREM', keys[2], args[3])
  redis.call('PUBLISH', args[2], 'released')
  return {'ok', cur[2]}
end

-- lock_free: free the lock if `token` still holds it (its holder, an agent, is gone).
-- KEYS (2): lock locks
-- ARGV (3): token, channel, name
-- Returns: 1 when freed, 0 otherwise
local function lock_free(keys, args)
  if redis.call('HGET', keys[1], 'token') ~= args[1] then return 0 end
  redis.call('DEL', keys[1])
  redis.call('ZREM', keys[2], args[3])
  redis.call('PUBLISH', args[2], 'released')
  return 1
end

redis.register_function('lock_acquire', lock_acquire)
redis.register_function('lock_renew', lock_renew)
redis.register_function('lock_release', lock_release)
redis.register_function('lock_free', lock_free)
