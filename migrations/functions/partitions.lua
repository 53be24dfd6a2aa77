
--[[ Memory partitions: a namespace with an owner, a tier and a quota. `part` hash (same
`{ns}` slot) holds the partition; its limits are copied into the namespace meta (qb, qk, dttl)
where every write checks them. The pool (`<p>:pool` hash: allocated; `<p>:partitions` set) is
in another slot and kept by pool_set. ]]

-- part_create: claim the partition's name and set its limits (the pool allocation follows).
-- KEYS (2): part meta
-- ARGV (6): name, owner, tier, quota_bytes, max_keys ('' none), default_ttl_ms ('' none)
-- Returns: {'ok'} | {'exists'}
local function part_create(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return {'exists'} end
  local now = now_ms()
  redis.call('HSET', keys[1], 'name', args[1], 'owner_agent', args[2], 'tier', args[3],
             'quota_bytes', args[4], 'max_keys', args[5], 'default_ttl_ms', args[6],
             'created_at', now, 'updated_at', now)
  redis.call('HSET', keys[2], 'qb', args[4])
  if args[5] ~= '' then redis.call('HSET', keys[2], 'qk', args[5]) else redis.call('HDEL', keys[2], 'qk') end
  if args[6] ~= '' then redis.call('HSET', keys[2], 'dttl', args[6]) else redis.call('HDEL', keys[2], 'dttl') end
  return {'ok'}
end

-- part_update: change the quota and/or the key limit.
-- KEYS (2): part meta
-- ARGV (2): quota_bytes ('' keep), max_keys ('' keep, '0' none)
-- Returns: {'ok', old quota} | {'not_found'}
local function part_update(keys, args)
  local old = redis.call('HGET', keys[1], 'quota_bytes')
  if not old then return {'not_found'} end
  if args[1] ~= '' then
    redis.call('HSET', keys[1], 'quota_bytes', args[1])
    redis.call('HSET', keys[2], 'qb', args[1])
  end
  if args[2] == '0' then
    redis.call('HSET', keys[1], 'max_keys', '')
    redis.call('HDEL', keys[2], 'qk')
  elseif args[2] ~= '' then
    redis.call('HSET', keys[1], 'max_keys', args[2])
    redis.call('HSET', keys[2], 'qk', args[2])
  end
  redis.call('HSET', keys[1], 'updated_at', now_ms())
  return {'ok', old}
end

-- ns_drop: remove a page of a partition's entries (the caller reads the page from idx and
-- passes each entry's keys): each key still indexed is deleted like a DELETE (unindexed,
-- accounted, logged as a `delete` with its own revision, so watchers see it). The revision
-- counter, the change log and the fence hash stay (fencing tokens keep increasing; resumes
-- stay gap-free). When nothing is left the partition record and its limits go.
-- KEYS (6+2n): meta idx log ttl sz part, then entry_i, hist_i of each key of the page
-- ARGV (6+n): ctx(6), key_1 .. key_n
-- Returns: entries left (0 = done)
local function ns_drop(keys, args)
  local ctx = ctx_new(keys, args, nil)
  for i = 1, #args - 6 do
    local k, ekey, hkey = args[6 + i], keys[5 + 2 * i], keys[6 + 2 * i]
    if redis.call('ZSCORE', ctx.idx, k) then
      local ver = redis.pcall('GETRANGE', ekey, 0, 24)
      if type(ver) == 'string' then ver = tonumber(string.match(ver, '^(%d+)\t')) else ver = nil end
      redis.call('DEL', ekey)
      unindex(ctx, k, hkey)
      log_event(ctx, bump(ctx), 'delete', k, ver or 0, nil)
    end
  end
  local left = redis.call('ZCARD', ctx.idx)
  if left == 0 then
    redis.call('DEL', keys[6])
    redis.call('HDEL', ctx.meta, 'qb', 'qk', 'dttl')
  end
  return left
end

-- ns_recount: exact recount of a namespace's accounted bytes from its per-key sizes (one
-- slot, so a consistent snapshot), correcting `bytes` if it drifted. Meant for partitions,
-- whose size hash is bounded by max_keys/quota.
-- KEYS (2): meta sz
-- ARGV (0): -
-- Returns: the drift (stored minus recounted)
local function ns_recount(keys, args)
  local total = 0
  local vals = redis.call('HVALS', keys[2])
  for _, v in ipairs(vals) do total = total + tonumber(v) end
  local stored = tonumber(redis.call('HGET', keys[1], 'bytes') or '0')
  if stored ~= total then redis.call('HSET', keys[1], 'bytes', total) end
  return stored - total
end

-- pool_set: the pool keeps a ledger: field <name> = bytes allocated to that partition, and
-- their sum in a key of its own. Setting an allocation is absolute (not a delta), so a repeated
-- or concurrent call cannot count twice.
-- KEYS (2): ledger total
-- ARGV (4): name, bytes (0 = release), capacity, 'check' | 'force' (force: no capacity check;
--   upkeep repairing the ledger)
-- Returns: {'ok', allocated} | {'exhausted', allocated}
local function pool_set(keys, args)
  local name, want, cap = args[1], tonumber(args[2]), tonumber(args[3])
  local old = tonumber(redis.call('HGET', keys[1], name) or '0')
  local allocated = tonumber(redis.call('GET', keys[2]) or '0')
  local delta = want - old
  if delta > 0 and args[4] ~= 'force' and allocated + delta > cap then
    return {'exhausted', allocated}
  end
  if want == 0 then
    redis.call('HDEL', keys[1], name)
  else
    redis.call('HSET', keys[1], name, want)
  end
  allocated = redis.call('INCRBY', keys[2], delta)
  return {'ok', allocated}
end

redis.register_function('part_create', part_create)
redis.register_function('part_update', part_update)
redis.register_function('ns_drop', ns_drop)
redis.register_function('pool_set', pool_set)
redis.register_function('ns_recount', ns_recount)
