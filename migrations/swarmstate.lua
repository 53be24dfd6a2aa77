#!lua name=swarmstate
--[[
swarmstate functions library: every state-changing key/value operation, one atomic call each.

Loaded at start-up by the service (FUNCTION LOAD REPLACE, on every primary in cluster mode)
whenever `swarmstate_version` answers something other than LIBRARY_VERSION below; the Rust side
keeps the same number in `store::migrate::LIBRARY_VERSION`.

Namespace keys (all share the `{ns}` hash tag, all passed in KEYS; see src/store/keys.rs):
  meta  hash    rev = namespace revision, bytes = bytes used by live entries
  idx   zset    every live key, score 0, ordered by byte value (ZRANGEBYLEX listing)
  log   stream  change log, one entry per revision with id 0-<revision>, capped (MAXLEN ~)
  ttl   zset    key -> expiry (unix ms) for keys with a TTL, so expiries can be reconciled
  sz    hash    key -> accounted size (#key + #value + #metadata)
  e:<k> string  the entry as one record (below); PXAT set when it has a TTL
  h:<k> hash    past versions of the entry: field <version> -> record

record = ver \t crev \t mrev \t ct \t ut \t exp \t sz \t agent \t reason \n metadata \n value
  ct/ut/exp are unix ms (exp '' without TTL), sz the accounted size; agent ids and reasons
  never hold control characters (the service refuses them), metadata is '' when absent.

Every mutating function takes KEYS[1..5] = meta, idx, log, ttl, sz and
ARGV[1..6] = log_maxlen, history_versions, agent id ('' = none), change reason ('' = none),
fencing lock name and token ('' = none; from `x-fencing-token: <lock>:<n>`).
Checks come first; nothing is written until every check has passed.
]]

local LIBRARY_VERSION = '11'
local MAX_SAFE = 9007199254740991

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ctx_new(keys, args)
  return {
    meta = keys[1], idx = keys[2], log = keys[3], ttl = keys[4], sz = keys[5],
    maxlen = args[1], hist_n = tonumber(args[2]), agent = args[3], reason = args[4],
    fence_name = args[5], fence_n = args[6],
    now = now_ms(),
  }
end

local function fmt(n)
  return string.format('%d', n)
end

-- Partition limits of the namespace (meta fields qb = quota bytes, qk = max keys, dttl =
-- default TTL ms), read once per call. Plain namespaces have none.
local function limits(ctx)
  if not ctx.lim then
    local f = redis.call('HMGET', ctx.meta, 'qb', 'qk', 'dttl')
    ctx.lim = {qb = tonumber(f[1]), qk = tonumber(f[2]), dttl = tonumber(f[3])}
  end
  return ctx.lim
end

local function bump(ctx)
  return redis.call('HINCRBY', ctx.meta, 'rev', 1)
end

-- Append one change to the namespace log under id 0-<rev>.
local function log_event(ctx, rev, kind, key, ver, value)
  local a = {'XADD', ctx.log, 'MAXLEN', '~', ctx.maxlen, '0-' .. fmt(rev),
             'k', kind, 'key', key, 'ver', fmt(ver), 'ts', fmt(ctx.now)}
  if value then a[#a + 1] = 'v'; a[#a + 1] = value end
  if ctx.agent ~= '' then a[#a + 1] = 'a'; a[#a + 1] = ctx.agent end
  if ctx.reason ~= '' then a[#a + 1] = 'r'; a[#a + 1] = ctx.reason end
  redis.call(unpack(a))
end

-- Drop a key that no longer has an entry from the index and the accounting.
local function unindex(ctx, key, hkey)
  local sz = tonumber(redis.call('HGET', ctx.sz, key) or '0')
  redis.call('ZREM', ctx.idx, key)
  redis.call('ZREM', ctx.ttl, key)
  redis.call('HDEL', ctx.sz, key)
  redis.call('DEL', hkey)
  if sz ~= 0 then redis.call('HINCRBY', ctx.meta, 'bytes', -sz) end
end

-- Called when `key` has no entry. If it is still indexed, something other than this library
-- removed the entry: record that with a revision of its own, as `kind` when the caller knows
-- it (from a keyspace notification: expire / evict / external), otherwise as `expire` when
-- its TTL has passed and `evict` when not. Idempotent: a second call finds the key unindexed
-- and does nothing, so several service replicas relaying the same notification record it once.
local function reconcile_missing(ctx, key, hkey, kind)
  if not redis.call('ZSCORE', ctx.idx, key) then return false end
  if not kind then
    local exp = redis.call('ZSCORE', ctx.ttl, key)
    kind = 'evict'
    if exp and tonumber(exp) <= ctx.now then kind = 'expire' end
  end
  unindex(ctx, key, hkey)
  local rev = bump(ctx)
  log_event(ctx, rev, kind, key, 0, nil)
  return true
end

-- The record at `ekey`, or false. A value of another Redis type there can only have been
-- written by another client: it is removed and recorded as an `external` change.
local function get_rec(ctx, key, ekey, hkey)
  local v = redis.pcall('GET', ekey)
  if type(v) == 'table' and v.err then
    redis.call('DEL', ekey)
    reconcile_missing(ctx, key, hkey, 'external')
    return false
  end
  return v
end

local function reconcile(ctx, key, ekey, hkey)
  if redis.call('EXISTS', ekey) == 1 then return false end
  return reconcile_missing(ctx, key, hkey)
end

-- Parse a record's header: ver, crev, ct, exp (nil without TTL), sz; and the header's end.
local function head_of(rec)
  local ver, crev, ct, exp, sz = string.match(rec, '^(%d+)\t(%d+)\t%d+\t(%d+)\t%d+\t(%d*)\t(%d+)\t')
  if not ver then return nil end
  if exp == '' then exp = nil end
  return {ver = tonumber(ver), crev = crev, ct = ct, exp = exp, sz = tonumber(sz)}
end

-- Metadata and value of a record.
local function body_of(rec)
  local a = string.find(rec, '\n', 1, true)
  local b = string.find(rec, '\n', a + 1, true)
  return string.sub(rec, a + 1, b - 1), string.sub(rec, b + 1)
end

-- Version of the entry at ekey without reading its value; nil when absent.
local function version_of(ekey)
  local h = redis.call('GETRANGE', ekey, 0, 24)
  return tonumber(string.match(h, '^(%d+)\t'))
end

-- expect: nil = unconditional, 0 = must be absent, -1 = must exist, n > 0 = version must be n.
-- ttl: nil = no TTL, -1 = keep the current expiry, n > 0 = expire n ms from now.
-- Returns {'ok', ver, crev, mrev, ct, ut, exp|'' , created} or {'version_mismatch', current}.
local function put_core(ctx, key, ekey, hkey, value, meta, ttl, expect)
  local old = get_rec(ctx, key, ekey, hkey)
  local h = nil
  if old then h = head_of(old) end
  -- Not a record (another client's value) is an external change; missing while indexed is an
  -- expiry or an eviction (or a DEL the relay did not see).
  if not h then reconcile_missing(ctx, key, hkey, old and 'external' or nil) end
  local ver = h and h.ver
  if expect ~= nil then
    if (expect == 0 and ver) or (expect == -1 and not ver) or (expect > 0 and ver ~= expect) then
      return {'version_mismatch', ver or 0}
    end
  end
  local lim = limits(ctx)
  -- A new key gets the partition's default TTL unless the write set one ('keep' has nothing
  -- to keep on a new key).
  if (ttl == nil or (ttl == -1 and not h)) and lim.dttl then ttl = lim.dttl end
  if (lim.qb or lim.qk) and not ctx.quota_checked then
    -- A write into a partition may not pass its quota (growth only: a write that shrinks usage
    -- is allowed even when a lowered quota is already passed).
    local oldsz = h and h.sz or 0
    local size = #key + #value + #meta
    if lim.qb and size > oldsz then
      local used = tonumber(redis.call('HGET', ctx.meta, 'bytes') or '0')
      if used + size - oldsz > lim.qb then return {'quota_exceeded', 'bytes', used, lim.qb} end
    end
    if lim.qk and not h then
      local n = redis.call('ZCARD', ctx.idx)
      if n + 1 > lim.qk then return {'quota_exceeded', 'keys', n, lim.qk} end
    end
  end
  local rev = bump(ctx)
  local newver, crev, ct
  local old_exp = h and h.exp
  if h then
    if ctx.hist_n > 1 then
      redis.call('HSET', hkey, fmt(ver), old)
      local drop = ver - ctx.hist_n + 1
      if drop >= 1 then redis.call('HDEL', hkey, fmt(drop)) end
    end
    newver = ver + 1
    crev = h.crev
    ct = h.ct
  else
    newver = 1
    crev = fmt(rev)
    ct = fmt(ctx.now)
    redis.call('ZADD', ctx.idx, 0, key)
  end
  local exp = nil
  if ttl == -1 then
    exp = old_exp
  elseif ttl then
    exp = fmt(ctx.now + ttl)
  end
  local size = #key + #value + #meta
  local oldsz = h and h.sz or 0
  if size ~= oldsz or not h then redis.call('HSET', ctx.sz, key, size) end
  if size ~= oldsz then redis.call('HINCRBY', ctx.meta, 'bytes', size - oldsz) end
  local rec = table.concat({fmt(newver), crev, fmt(rev), ct, fmt(ctx.now), exp or '', fmt(size),
                            ctx.agent, ctx.reason}, '\t') .. '\n' .. meta .. '\n' .. value
  if exp then
    redis.call('SET', ekey, rec, 'PXAT', exp)
    -- The history hash may only now have been created: give it the entry's expiry every time.
    redis.call('PEXPIREAT', hkey, exp)
    if exp ~= old_exp then redis.call('ZADD', ctx.ttl, exp, key) end
  else
    redis.call('SET', ekey, rec)
    if old_exp then
      redis.call('PERSIST', hkey)
      redis.call('ZREM', ctx.ttl, key)
    end
  end
  log_event(ctx, rev, 'put', key, newver, value)
  local created = 0
  if not h then created = 1 end
  return {'ok', newver, tonumber(crev), rev, tonumber(ct), ctx.now, exp or '', created}
end

-- Returns {'ok', revision, deleted_version} | {'not_found'} | {'version_mismatch', current}.
local function delete_core(ctx, key, ekey, hkey, expect)
  local ver = get_rec(ctx, key, ekey, hkey) and version_of(ekey)
  if not ver then
    reconcile_missing(ctx, key, hkey)
    return {'not_found'}
  end
  if expect ~= nil and expect ~= -1 and expect ~= ver then return {'version_mismatch', ver} end
  local rev = bump(ctx)
  redis.call('DEL', ekey)
  unindex(ctx, key, hkey)
  log_event(ctx, rev, 'delete', key, ver, nil)
  return {'ok', rev, ver}
end

local function parse_expect(s)
  if s == nil or s == '' then return nil end
  return tonumber(s)
end

local function parse_ttl(s)
  if s == nil or s == '' then return nil end
  return tonumber(s)
end

-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(6), key, value, metadata ('' = none), ttl_ms ('' | '-1' keep | n), expect ('' | '0' | '-1' | n)
-- x-fencing-token: the write carries lock `fence_name`'s token `fence_n`, which must still be
-- the newest token that lock has granted. The lock lives in the same namespace (same slot), so
-- the check is atomic with the write. Returns the refusal, or nil.
local function fence_stale(ctx)
  if ctx.fence_name == nil or ctx.fence_name == '' then return nil end
  local fkey = string.sub(ctx.meta, 1, -5) .. 'fence'
  local cur = tonumber(redis.call('HGET', fkey, ctx.fence_name) or '0')
  if cur ~= tonumber(ctx.fence_n) then return {'stale_fencing_token', cur} end
  return nil
end

local function kv_put(keys, args)
  local ctx = ctx_new(keys, args)
  local stale = fence_stale(ctx)
  if stale then return stale end
  return put_core(ctx, args[7], keys[6], keys[7], args[8], args[9], parse_ttl(args[10]), parse_expect(args[11]))
end

-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(6), key, expect ('' | n)
local function kv_delete(keys, args)
  local ctx = ctx_new(keys, args)
  local stale = fence_stale(ctx)
  if stale then return stale end
  return delete_core(ctx, args[7], keys[6], keys[7], parse_expect(args[8]))
end

-- Writes a retained past version's value and metadata as a new version (TTL kept).
-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(6), key, version
-- Returns like kv_put, or {'not_found'} (no entry) / {'version_not_found'}.
local function kv_rollback(keys, args)
  local ctx = ctx_new(keys, args)
  local stale = fence_stale(ctx)
  if stale then return stale end
  local key, ekey, hkey = args[7], keys[6], keys[7]
  local want = tonumber(args[8])
  local cur = get_rec(ctx, key, ekey, hkey)
  local h = cur and head_of(cur)
  if not h then
    reconcile_missing(ctx, key, hkey, cur and 'external' or nil)
    return {'not_found'}
  end
  local rec = cur
  if want ~= h.ver then
    rec = redis.call('HGET', hkey, fmt(want))
    if not rec then return {'version_not_found'} end
  end
  local meta, value = body_of(rec)
  local r = put_core(ctx, key, ekey, hkey, value, meta, -1, h.ver)
  r[#r + 1] = value
  r[#r + 1] = meta
  return r
end

-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(6), key, by, ttl_ms ('' = none; applied only when the increment creates the counter)
-- Returns {'ok', value, ver, crev, mrev, ct, ut, exp, created} | {'not_a_counter'} | {'overflow'}.
local function kv_incr(keys, args)
  local ctx = ctx_new(keys, args)
  local stale = fence_stale(ctx)
  if stale then return stale end
  local key, ekey, hkey = args[7], keys[6], keys[7]
  local by = tonumber(args[8])
  local cur = get_rec(ctx, key, ekey, hkey)
  local h = cur and head_of(cur)
  local n, meta, ttl
  if h then
    local m, v = body_of(cur)
    if not string.match(v, '^%-?%d+$') then return {'not_a_counter'} end
    local cur_n = tonumber(v)
    -- Lua numbers are doubles: beyond 2^53 an increment would not be exact.
    if cur_n > MAX_SAFE or cur_n < -MAX_SAFE then return {'overflow'} end
    n = cur_n + by
    meta = m
    ttl = -1
  else
    n = by
    meta = ''
    ttl = parse_ttl(args[9])
  end
  if n > MAX_SAFE or n < -MAX_SAFE then return {'overflow'} end
  local text = fmt(n)
  local r = put_core(ctx, key, ekey, hkey, text, meta, ttl, h and h.ver or 0)
  table.insert(r, 2, text)
  return r
end

-- Reconcile one key whose entry may have been removed by Redis (expiry, eviction).
-- KEYS: meta idx log ttl sz entry hist; ARGV: ctx(6), key
-- Returns 1 when an event was recorded, 0 otherwise.
local function kv_forget(keys, args)
  local ctx = ctx_new(keys, args)
  local key, ekey = args[7], keys[6]
  if redis.call('EXISTS', ekey) == 1 then
    -- Due but still there: another client changed its TTL (PERSIST, EXPIRE). Track the real
    -- expiry so the reconciler does not come back for it every second.
    local pt = redis.call('PTTL', ekey)
    if pt < 0 then
      redis.call('ZREM', ctx.ttl, key)
    else
      redis.call('ZADD', ctx.ttl, ctx.now + pt, key)
    end
    return 0
  end
  if reconcile_missing(ctx, key, keys[7]) then return 1 end
  return 0
end

-- Whether the string at `ekey` is a record this library wrote for `key`: indexed, a header
-- that parses, a length that matches its accounted size, and a modification revision not
-- ahead of the namespace's. Anything else was written by another Redis client.
local function own_record(ctx, key, ekey)
  local acc = redis.call('HGET', ctx.sz, key)
  if not acc or not redis.call('ZSCORE', ctx.idx, key) then return false end
  local head = redis.call('GETRANGE', ekey, 0, 4095)
  local nl = string.find(head, '\n', 1, true)
  if not nl then return false end
  local mrev, sz = string.match(string.sub(head, 1, nl),
    '^%d+\t%d+\t(%d+)\t%d+\t%d+\t%d*\t(%d+)\t[^\t\n]*\t[^\t\n]*\n$')
  if not mrev or sz ~= acc then return false end
  if redis.call('STRLEN', ekey) ~= nl + 1 + tonumber(sz) - #key then return false end
  return tonumber(mrev) <= tonumber(redis.call('HGET', ctx.meta, 'rev') or '0')
end

-- Check keys a keyspace notification named. hint: 'expired' | 'evicted' | 'gone' (deleted or
-- renamed away by a command) | 'written'. A missing entry that is still indexed is recorded
-- (expire / evict / external); an entry holding something this library did not write is
-- returned, and the caller adopts it with kv_adopt. Idempotent across replicas.
-- KEYS: meta idx log ttl sz, then entry_i, hist_i per key; ARGV: ctx(6), n, (key, hint) * n
local function kv_observe(keys, args)
  local ctx = ctx_new(keys, args)
  local n = tonumber(args[7])
  local kinds = {expired = 'expire', evicted = 'evict', gone = 'external'}
  local foreign = {}
  for i = 1, n do
    local key, hint = args[6 + 2 * i], args[7 + 2 * i]
    local ekey, hkey = keys[4 + 2 * i], keys[5 + 2 * i]
    local t = redis.call('TYPE', ekey)['ok']
    if t == 'none' then
      reconcile_missing(ctx, key, hkey, kinds[hint])
    elseif t ~= 'string' or not own_record(ctx, key, ekey) then
      foreign[#foreign + 1] = key
    end
  end
  return foreign
end

-- Adopt what another Redis client wrote at an entry key as a new life of the key, logged as
-- an `external` event: version and create revision are the event's revision (above any
-- version the key had, so an old If-Match can never match again), history is cleared, the
-- Redis TTL the writer set is kept. mode 'drop' removes a value that cannot be adopted
-- (not a string, or larger than `limit` bytes) and logs an external delete if it was indexed.
-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(6), key, mode 'adopt'|'drop', sha1 of the contents the caller read, value, metadata, limit
-- Returns {'ok', revision} | {'own'} | {'gone'} | {'changed'} | {'dropped'}.
local function kv_adopt(keys, args)
  local ctx = ctx_new(keys, args)
  local key, ekey, hkey = args[7], keys[6], keys[7]
  local mode, sha, value, meta, limit = args[8], args[9], args[10], args[11], tonumber(args[12])
  local t = redis.call('TYPE', ekey)['ok']
  if t == 'none' then
    reconcile_missing(ctx, key, hkey, 'external')
    return {'gone'}
  end
  if t == 'string' and own_record(ctx, key, ekey) then return {'own'} end
  if mode == 'drop' then
    if t == 'string' and redis.call('STRLEN', ekey) <= limit then return {'changed'} end
    redis.call('DEL', ekey)
    reconcile_missing(ctx, key, hkey, 'external')
    return {'dropped'}
  end
  if t ~= 'string' or redis.sha1hex(redis.call('GET', ekey)) ~= sha then return {'changed'} end
  local pttl = redis.call('PTTL', ekey)
  local oldsz = tonumber(redis.call('HGET', ctx.sz, key) or '0')
  if not redis.call('ZSCORE', ctx.idx, key) then redis.call('ZADD', ctx.idx, 0, key) end
  redis.call('DEL', hkey)
  local rev = bump(ctx)
  local exp = nil
  if pttl > 0 then exp = fmt(ctx.now + pttl) end
  local size = #key + #value + #meta
  redis.call('HSET', ctx.sz, key, size)
  if size ~= oldsz then redis.call('HINCRBY', ctx.meta, 'bytes', size - oldsz) end
  local r = fmt(rev)
  local rec = table.concat({r, r, r, fmt(ctx.now), fmt(ctx.now), exp or '', fmt(size),
                            ctx.agent, ctx.reason}, '\t') .. '\n' .. meta .. '\n' .. value
  if exp then
    redis.call('SET', ekey, rec, 'PXAT', exp)
    redis.call('ZADD', ctx.ttl, exp, key)
  else
    redis.call('SET', ekey, rec)
    redis.call('ZREM', ctx.ttl, key)
  end
  log_event(ctx, rev, 'external', key, rev, value)
  return {'ok', rev}
end

-- Compare-then-apply transaction, all-or-nothing.
-- KEYS: meta idx log ttl sz, then entry_i, hist_i for each distinct key i (1-based)
-- ARGV: ctx(6), nkeys, key_1..key_n,
--       ncmp, (ki, kind 'version'|'exists'|'value', arg) * ncmp,
--       nsucc, (op 'put'|'delete'|'get', ki, value, metadata, ttl) * nsucc,
--       nfail, (same) * nfail
-- Returns {succeeded 0|1, revision, results...}; a result is
--   {'put', ver, mrev, created} | {'delete', found 0|1} | {'get', record or false}.
local function kv_txn(keys, args)
  local ctx = ctx_new(keys, args)
  local stale = fence_stale(ctx)
  if stale then return stale end
  local p = 7
  local nkeys = tonumber(args[p]); p = p + 1
  local names = {}
  for i = 1, nkeys do names[i] = args[p]; p = p + 1 end
  local function ek(i) return keys[5 + 2 * i - 1] end
  local function hk(i) return keys[5 + 2 * i] end
  for i = 1, nkeys do reconcile(ctx, names[i], ek(i), hk(i)) end

  local ok = true
  local ncmp = tonumber(args[p]); p = p + 1
  for _ = 1, ncmp do
    local ki, kind, arg = tonumber(args[p]), args[p + 1], args[p + 2]
    p = p + 3
    if ok then
      local cur = get_rec(ctx, names[ki], ek(ki), hk(ki))
      local h = cur and head_of(cur)
      local ver = h and h.ver or 0
      if kind == 'version' then
        ok = (ver == tonumber(arg))
      elseif kind == 'exists' then
        ok = ((ver > 0) == (arg == '1'))
      elseif kind == 'value' then
        local _, v = nil, nil
        if h then _, v = body_of(cur) end
        ok = (v ~= nil and v == arg)
      else
        return redis.error_reply('ERR unknown compare kind ' .. tostring(kind))
      end
    end
  end

  local function read_ops()
    local n = tonumber(args[p]); p = p + 1
    local ops = {}
    for i = 1, n do
      ops[i] = {args[p], tonumber(args[p + 1]), args[p + 2], args[p + 3], parse_ttl(args[p + 4])}
      p = p + 5
    end
    return ops
  end
  local succ = read_ops()
  local fail = read_ops()
  local ops = fail
  if ok then ops = succ end

  -- Partition quota: the transaction's end state may not pass it; checked before any write.
  local lim = limits(ctx)
  if lim.qb or lim.qk then
    local bytes0 = tonumber(redis.call('HGET', ctx.meta, 'bytes') or '0')
    local keys0 = redis.call('ZCARD', ctx.idx)
    local bytes, nkeys, cur = bytes0, keys0, {}
    for _, op in ipairs(ops) do
      local ki = op[2]
      if cur[ki] == nil then
        local sz = redis.call('HGET', ctx.sz, names[ki])
        cur[ki] = sz and tonumber(sz) or false
      end
      if op[1] == 'put' then
        local size = #names[ki] + #op[3] + #op[4]
        if cur[ki] then bytes = bytes - cur[ki] else nkeys = nkeys + 1 end
        bytes = bytes + size
        cur[ki] = size
      elseif op[1] == 'delete' and cur[ki] then
        bytes = bytes - cur[ki]
        nkeys = nkeys - 1
        cur[ki] = false
      end
    end
    if lim.qb and bytes > lim.qb and bytes > bytes0 then return {'quota_exceeded', 'bytes', bytes0, lim.qb} end
    if lim.qk and nkeys > lim.qk and nkeys > keys0 then return {'quota_exceeded', 'keys', keys0, lim.qk} end
    ctx.quota_checked = true
  end

  local results = {}
  for i, op in ipairs(ops) do
    local kind, ki = op[1], op[2]
    if kind == 'put' then
      local r = put_core(ctx, names[ki], ek(ki), hk(ki), op[3], op[4], op[5], nil)
      results[i] = {'put', r[2], r[4], r[8]}
    elseif kind == 'delete' then
      local r = delete_core(ctx, names[ki], ek(ki), hk(ki), nil)
      if r[1] == 'ok' then results[i] = {'delete', 1} else results[i] = {'delete', 0} end
    else
      results[i] = {'get', get_rec(ctx, names[ki], ek(ki), hk(ki))}
    end
  end
  local rev = tonumber(redis.call('HGET', ctx.meta, 'rev') or '0')
  local out = {ok and 1 or 0, rev}
  for i = 1, #results do out[#out + 1] = results[i] end
  return out
end

--[[ Task queues. Every queue's keys share the `{q:<name>}` hash tag:
  meta       hash  seq (task id counter), paused, totals: enqueued completed failed dead lease_expired
  ready      zset  ready tasks, score priority * 2^49 + seq (priority first, FIFO within it)
  age        zset  ready tasks by the time they became ready (oldest ready age)
  delayed    zset  tasks not due yet, by run_at
  retry      zset  failed tasks waiting for their backoff, by run_at
  leased     zset  leased tasks, by leased_until
  completed  zset  completed tasks, by the time their retention ends
  dead       zset  dead-lettered tasks, by the time their retention ends
  idem       hash  idempotency key -> task id
  t:<id>     hash  the task
Task ids are the queue's sequence numbers. Every state change PUBLISHes a small JSON summary on
the queue's channel (ARGV[2]) — it wakes long-polling leases and feeds `queue` watches.
Functions take KEYS = the nine keys above and ARGV[1] = task key prefix, ARGV[2] = channel.
]]

local Q_SHIFT = 562949953421312 -- 2^49: priorities 0..9 times this plus a sequence stay below 2^53
local Q_MAX_DELAY = 86400000 -- longest retry delay: one day

local function q_ctx(keys, args)
  return {meta = keys[1], ready = keys[2], age = keys[3], delayed = keys[4], retry = keys[5],
          leased = keys[6], completed = keys[7], dead = keys[8], idem = keys[9],
          tprefix = args[1], channel = args[2], now = now_ms()}
end

local function q_emit(c, id)
  local f = redis.call('HMGET', c.tprefix .. id, 'state', 'attempts', 'max_attempts', 'priority',
                       'run_at', 'lease_owner', 'last_error')
  local ev = {id = id, state = f[1], attempts = tonumber(f[2]), max_attempts = tonumber(f[3]),
              priority = tonumber(f[4]), run_at = tonumber(f[5]), time = c.now}
  if f[6] and f[6] ~= '' then ev.lease_owner = f[6] end
  if f[7] and f[7] ~= '' then ev.last_error = f[7] end
  redis.call('PUBLISH', c.channel, cjson.encode(ev))
end

local function q_make_ready(c, id, prio, seq)
  local tk = c.tprefix .. id
  if not prio then
    local f = redis.call('HMGET', tk, 'priority', 'seq')
    prio, seq = tonumber(f[1]), tonumber(f[2])
  end
  redis.call('ZADD', c.ready, prio * Q_SHIFT + seq, id)
  redis.call('ZADD', c.age, c.now, id)
  redis.call('HSET', tk, 'state', 'ready', 'lease_owner', '', 'lease_token', '', 'leased_until', '')
end

local function q_finish(c, id, state, zset)
  local tk = c.tprefix .. id
  local keep = tonumber(redis.call('HGET', tk, 'retention_ms') or '0')
  redis.call('HSET', tk, 'state', state, 'finished_at', c.now, 'lease_token', '', 'leased_until', '')
  redis.call('ZADD', zset, c.now + keep, id)
  redis.call('HINCRBY', c.meta, state, 1)
end

local function q_remove(c, id)
  local tk = c.tprefix .. id
  local idem = redis.call('HGET', tk, 'idem')
  if idem and idem ~= '' and redis.call('HGET', c.idem, idem) == id then
    redis.call('HDEL', c.idem, idem)
  end
  redis.call('DEL', tk)
end

-- A leased task whose lease has run out: the attempt counts; back to ready, or dead when it
-- was the last one.
local function q_expire_lease(c, id)
  local tk = c.tprefix .. id
  redis.call('ZREM', c.leased, id)
  redis.call('HINCRBY', c.meta, 'lease_expired', 1)
  redis.call('HSET', tk, 'last_error', 'lease expired')
  local f = redis.call('HMGET', tk, 'attempts', 'max_attempts')
  if tonumber(f[1]) >= tonumber(f[2]) then
    q_finish(c, id, 'dead', c.dead)
  else
    q_make_ready(c, id)
  end
  q_emit(c, id)
end

-- Promote due delayed / retry tasks, reclaim expired leases, and (with `retention`) drop
-- tasks past their retention. Returns how many tasks became ready.
local function q_promote(c, limit, retention)
  local n, cleaned = 0, 0
  for _, z in ipairs({c.delayed, c.retry}) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', c.now, 'LIMIT', 0, limit)) do
      redis.call('ZREM', z, id)
      q_make_ready(c, id)
      q_emit(c, id)
      n = n + 1
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', c.leased, '-inf', c.now, 'LIMIT', 0, limit)) do
    q_expire_lease(c, id)
    n = n + 1
  end
  if retention then
    for _, z in ipairs({c.completed, c.dead}) do
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', c.now, 'LIMIT', 0, limit)) do
        redis.call('ZREM', z, id)
        q_remove(c, id)
        cleaned = cleaned + 1
      end
    end
  end
  return n, cleaned
end

local function q_next_due(c)
  local due = nil
  for _, z in ipairs({c.delayed, c.retry, c.leased}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local s = tonumber(first[2])
      if not due or s < due then due = s end
    end
  end
  return due
end

-- ARGV: prefix, channel, payload, priority, delay_ms ('' none), run_at ('' none),
--       max_attempts, backoff_ms, idempotency key ('' none), retention_ms
-- Returns {'created'|'exists', task fields...}
local function q_enqueue(keys, args)
  local c = q_ctx(keys, args)
  local idem = args[9]
  if idem ~= '' then
    local ex = redis.call('HGET', c.idem, idem)
    if ex and redis.call('EXISTS', c.tprefix .. ex) == 1 then
      return {'exists', redis.call('HGETALL', c.tprefix .. ex)}
    end
  end
  local seq = redis.call('HINCRBY', c.meta, 'seq', 1)
  local id = fmt(seq)
  local tk = c.tprefix .. id
  local run_at = c.now
  if args[6] ~= '' then
    run_at = tonumber(args[6])
  elseif args[5] ~= '' then
    run_at = c.now + tonumber(args[5])
  end
  redis.call('HSET', tk, 'id', id, 'seq', seq, 'payload', args[3], 'priority', args[4],
             'attempts', 0, 'max_attempts', args[7], 'backoff_ms', args[8], 'idem', idem,
             'retention_ms', args[10], 'enqueued_at', c.now, 'run_at', run_at)
  if run_at > c.now then
    redis.call('HSET', tk, 'state', 'delayed')
    redis.call('ZADD', c.delayed, run_at, id)
  else
    q_make_ready(c, id, tonumber(args[4]), seq)
  end
  if idem ~= '' then redis.call('HSET', c.idem, idem, id) end
  redis.call('HINCRBY', c.meta, 'enqueued', 1)
  q_emit(c, id)
  return {'created', redis.call('HGETALL', tk)}
end

-- ARGV: prefix, channel, worker, lease_ms, token_1 .. token_n (one per task wanted)
-- Returns {{task fields}...}, next due time ('' = none), paused 0|1
local function q_lease(keys, args)
  local c = q_ctx(keys, args)
  q_promote(c, 1000, false)
  local out = {}
  local paused = redis.call('HGET', c.meta, 'paused') == '1'
  if not paused then
    local want = #args - 4
    local popped = redis.call('ZPOPMIN', c.ready, want)
    local until_ms = c.now + tonumber(args[4])
    for i = 1, #popped, 2 do
      local id = popped[i]
      local tk = c.tprefix .. id
      redis.call('ZREM', c.age, id)
      redis.call('HINCRBY', tk, 'attempts', 1)
      redis.call('HSET', tk, 'state', 'leased', 'leased_until', until_ms, 'lease_owner', args[3],
                 'lease_token', args[4 + (i + 1) / 2], 'started_at', c.now)
      redis.call('ZADD', c.leased, until_ms, id)
      q_emit(c, id)
      out[#out + 1] = redis.call('HGETALL', tk)
    end
  end
  -- When nothing was handed out, the caller sleeps until the next task is due.
  -- (as ms from now on Redis' clock, so the service's own clock does not matter).
  local due = nil
  if #out == 0 then due = q_next_due(c) end
  return {out, due and fmt(math.max(due - c.now, 0)) or '', paused and 1 or 0}
end

-- Check a lease token. Returns the task key, or an error reply table.
local function q_check_lease(c, id, token)
  local tk = c.tprefix .. id
  local f = redis.call('HMGET', tk, 'state', 'lease_token', 'leased_until')
  if not f[1] then return nil, {'not_found'} end
  if f[1] ~= 'leased' or f[2] ~= token then return nil, {'lease_lost', f[1]} end
  if tonumber(f[3]) <= c.now then
    q_expire_lease(c, id)
    return nil, {'lease_lost', 'expired'}
  end
  return tk, nil
end

-- ARGV: prefix, channel, id, token, result ('' none)
-- x-fencing-token on an ack/nack: KEYS[10] is the lock namespace's fence hash (another slot:
-- standalone and Sentinel only). Returns the refusal, or nil.
local function q_fence(keys, name, n)
  if not name or name == '' then return nil end
  local cur = tonumber(redis.call('HGET', keys[10], name) or '0')
  if cur ~= tonumber(n) then return {'stale_fencing_token', cur} end
  return nil
end

-- ARGV: prefix, channel, id, token, result ('' none), [fence lock, fence token]
local function q_ack(keys, args)
  local c = q_ctx(keys, args)
  local stale = q_fence(keys, args[6], args[7])
  if stale then return stale end
  local id = args[3]
  local tk, err = q_check_lease(c, id, args[4])
  if not tk then return err end
  redis.call('ZREM', c.leased, id)
  if args[5] ~= '' then redis.call('HSET', tk, 'result', args[5]) end
  q_finish(c, id, 'completed', c.completed)
  q_emit(c, id)
  return {'ok', redis.call('HGETALL', tk)}
end

-- ARGV: prefix, channel, id, token, error, retry_delay_ms ('' = backoff)
local function q_nack(keys, args)
  local c = q_ctx(keys, args)
  local stale = q_fence(keys, args[7], args[8])
  if stale then return stale end
  local id = args[3]
  local tk, err = q_check_lease(c, id, args[4])
  if not tk then return err end
  local owner = redis.call('HGET', tk, 'lease_owner')
  redis.call('ZREM', c.leased, id)
  redis.call('HSET', tk, 'last_error', args[5])
  redis.call('HINCRBY', c.meta, 'failed', 1)
  local f = redis.call('HMGET', tk, 'attempts', 'max_attempts', 'backoff_ms')
  local attempts = tonumber(f[1])
  if attempts >= tonumber(f[2]) then
    q_finish(c, id, 'dead', c.dead)
  else
    local delay
    if args[6] ~= '' then
      delay = tonumber(args[6])
    else
      delay = tonumber(f[3]) * (2 ^ (attempts - 1))
    end
    -- Doubling without a cap would park a task for years after a few dozen failures.
    if delay > Q_MAX_DELAY then delay = Q_MAX_DELAY end
    if delay <= 0 then
      q_make_ready(c, id)
    else
      redis.call('HSET', tk, 'state', 'failed', 'run_at', c.now + delay, 'lease_token', '',
                 'leased_until', '', 'lease_owner', '')
      redis.call('ZADD', c.retry, c.now + delay, id)
    end
  end
  q_emit(c, id)
  return {'ok', redis.call('HGETALL', tk), owner}
end

-- ARGV: prefix, channel, id, token, lease_ms
local function q_extend(keys, args)
  local c = q_ctx(keys, args)
  local id = args[3]
  local tk, err = q_check_lease(c, id, args[4])
  if not tk then return err end
  local until_ms = c.now + tonumber(args[5])
  redis.call('HSET', tk, 'leased_until', until_ms)
  redis.call('ZADD', c.leased, until_ms, id)
  return {'ok', redis.call('HGETALL', tk)}
end

-- ARGV: prefix, channel. Background upkeep; returns tasks made ready.
-- Returns {made ready, removed by retention}; the caller calls again while either is 1000.
local function q_reap(keys, args)
  local n, cleaned = q_promote(q_ctx(keys, args), 1000, true)
  return {n, cleaned}
end

-- ARGV: prefix, channel, id. A dead task back to ready with its attempts reset.
local function q_retry_dead(keys, args)
  local c = q_ctx(keys, args)
  local id = args[3]
  local tk = c.tprefix .. id
  if redis.call('HGET', tk, 'state') ~= 'dead' then return {'not_found'} end
  redis.call('ZREM', c.dead, id)
  redis.call('HSET', tk, 'attempts', 0, 'finished_at', '')
  q_make_ready(c, id)
  q_emit(c, id)
  return {'ok', redis.call('HGETALL', tk)}
end

-- ARGV: prefix, channel. Removes up to 1000 dead tasks; returns how many.
local function q_purge_dead(keys, args)
  local c = q_ctx(keys, args)
  local ids = redis.call('ZRANGE', c.dead, 0, 999)
  for _, id in ipairs(ids) do
    redis.call('ZREM', c.dead, id)
    q_remove(c, id)
  end
  return #ids
end

-- ARGV: prefix, channel, paused '1' | '0'
local function q_pause(keys, args)
  local c = q_ctx(keys, args)
  redis.call('HSET', c.meta, 'paused', args[3])
  if args[3] == '0' then redis.call('PUBLISH', c.channel, '{"state":"ready","resumed":true}') end
  return 1
end

-- ARGV: prefix, channel. Counts per state, totals, paused, oldest ready (ms) — read only.
local function q_stats(keys, args)
  local c = q_ctx(keys, args)
  local oldest = redis.call('ZRANGE', c.age, 0, 0, 'WITHSCORES')
  local delayed = redis.call('ZCARD', c.delayed)
  local m = redis.call('HMGET', c.meta, 'paused', 'enqueued', 'completed', 'failed', 'dead',
                       'lease_expired', 'seq')
  return {redis.call('ZCARD', c.ready), delayed, redis.call('ZCARD', c.retry),
          redis.call('ZCARD', c.leased), redis.call('ZCARD', c.completed),
          redis.call('ZCARD', c.dead), m[1] or '0', m[2] or '0', m[3] or '0', m[4] or '0',
          m[5] or '0', m[6] or '0', oldest[2] or '', fmt(c.now)}
end

-- ARGV: prefix, channel, start, count. Dead tasks, oldest death first — read only.
local function q_dead_list(keys, args)
  local c = q_ctx(keys, args)
  local ids = redis.call('ZRANGE', c.dead, tonumber(args[3]), tonumber(args[3]) + tonumber(args[4]) - 1)
  local out = {}
  for i, id in ipairs(ids) do out[i] = redis.call('HGETALL', c.tprefix .. id) end
  return {out, redis.call('ZCARD', c.dead)}
end

--[[ Locks. Per namespace (same `{ns}` slot as its data, so a write can check a fencing token
atomically): lock:<name> hash {owner, token, fencing, acquired_at, expires_at} with PEXPIREAT,
and the `fence` hash: name -> last fencing token granted (never expires, so tokens keep
increasing across expiries and restarts). A release PUBLISHes on ARGV channel to wake waiters.
]]

-- KEYS: lock, fence; ARGV: name, owner, token, ttl_ms
-- Returns {'ok', fencing, expires_at} | {'held', owner, expires_at, ms left}
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
  return {'ok', f, exp}
end

-- KEYS: lock; ARGV: token, ttl_ms. Returns {'ok', fencing, expires_at} | {'none'} | {'held', owner}
local function lock_renew(keys, args)
  local cur = redis.call('HMGET', keys[1], 'token', 'owner', 'fencing')
  if not cur[1] then return {'none'} end
  if cur[1] ~= args[1] then return {'held', cur[2]} end
  local exp = now_ms() + tonumber(args[2])
  redis.call('HSET', keys[1], 'expires_at', exp)
  redis.call('PEXPIREAT', keys[1], exp)
  return {'ok', tonumber(cur[3]), exp}
end

-- KEYS: lock; ARGV: token, channel. Returns {'ok'} | {'none'} | {'held', owner}
local function lock_release(keys, args)
  local cur = redis.call('HMGET', keys[1], 'token', 'owner')
  if not cur[1] then return {'none'} end
  if cur[1] ~= args[1] then return {'held', cur[2]} end
  redis.call('DEL', keys[1])
  redis.call('PUBLISH', args[2], 'released')
  return {'ok', cur[2]}
end

--[[ Agents. Per agent (`{ag:<id>}` slot): a hash with its record and a set `held` of resources
it holds ("l\t<ns>\t<lock>\t<token>", "t\t<queue>\t<task>\t<token>") so they can be freed
at once when it is marked lost. The global `<p>:agents` zset (id -> heartbeat deadline) is kept
by the service next to these calls.
Lifecycle: initializing -> ready <-> running <-> paused; ready|running|paused -> terminating ->
terminated; any -> error; `lost` only by a missed heartbeat (register again to come back).
]]

local AGENT_NEXT = {
  initializing = {ready = true},
  ready = {running = true, terminating = true},
  running = {ready = true, paused = true, terminating = true},
  paused = {running = true, terminating = true},
  terminating = {terminated = true},
}

-- KEYS: agent, held; ARGV: id, capabilities JSON, metadata JSON, heartbeat_ttl_ms
-- Registering again resets the agent's record (state initializing) but keeps what it holds,
-- so a restarted agent that then goes silent still has its resources freed.
local function agent_register(keys, args)
  local now = now_ms()
  local ttl = tonumber(args[4])
  redis.call('DEL', keys[1])
  redis.call('HSET', keys[1], 'id', args[1], 'state', 'initializing', 'capabilities', args[2],
             'metadata', args[3], 'heartbeat_ttl_ms', ttl, 'registered_at', now,
             'last_heartbeat', now, 'deadline', now + ttl, 'state_changed_at', now)
  return redis.call('HGETALL', keys[1])
end

-- KEYS: agent; ARGV: -. Returns {'ok', fields} | {'not_found'} | {'gone', state}
local function agent_heartbeat(keys, args)
  local f = redis.call('HMGET', keys[1], 'state', 'heartbeat_ttl_ms')
  if not f[1] then return {'not_found'} end
  if f[1] == 'lost' or f[1] == 'terminated' then return {'gone', f[1]} end
  local now = now_ms()
  redis.call('HSET', keys[1], 'last_heartbeat', now, 'deadline', now + tonumber(f[2]))
  return {'ok', redis.call('HGETALL', keys[1])}
end

-- KEYS: agent; ARGV: new state. Returns {'ok', fields} | {'not_found'} | {'invalid', current}
local function agent_state(keys, args)
  local cur = redis.call('HGET', keys[1], 'state')
  if not cur then return {'not_found'} end
  local to = args[1]
  local ok = (to == 'error' and cur ~= 'lost' and cur ~= 'terminated')
             or (AGENT_NEXT[cur] and AGENT_NEXT[cur][to])
  if not ok then return {'invalid', cur} end
  local now = now_ms()
  redis.call('HSET', keys[1], 'state', to, 'state_changed_at', now)
  return {'ok', redis.call('HGETALL', keys[1])}
end

-- KEYS: agent, held; ARGV: now-check. Marks the agent lost if its deadline has passed.
-- Returns {'lost', held members...} | {'alive'} | {'skip'}
local function agent_lost(keys, args)
  local f = redis.call('HMGET', keys[1], 'state', 'deadline')
  if not f[1] or f[1] == 'lost' or f[1] == 'terminated' then return {'skip'} end
  local now = now_ms()
  if tonumber(f[2]) > now then return {'alive'} end
  redis.call('HSET', keys[1], 'state', 'lost', 'state_changed_at', now)
  local held = redis.call('SMEMBERS', keys[2])
  redis.call('DEL', keys[2])
  local out = {'lost'}
  for _, m in ipairs(held) do out[#out + 1] = m end
  return out
end

-- KEYS: agents zset; ARGV: id. Stop heartbeat checks for an agent that was found lost or
-- gone, unless it registered or heartbeat again meanwhile (its deadline moved to the future).
local function agent_untrack(keys, args)
  local s = redis.call('ZSCORE', keys[1], args[1])
  if s and tonumber(s) <= now_ms() then
    redis.call('ZADD', keys[1], 'inf', args[1])
    return 1
  end
  return 0
end

-- KEYS: agent, held; ARGV: members... Adds them if the agent exists and is not lost.
local function agent_hold(keys, args)
  local st = redis.call('HGET', keys[1], 'state')
  if not st or st == 'lost' or st == 'terminated' then return 0 end
  return redis.call('SADD', keys[2], unpack(args))
end

-- KEYS: lock; ARGV: token, channel. Frees the lock if `token` still holds it (lost agent).
local function lock_free(keys, args)
  if redis.call('HGET', keys[1], 'token') ~= args[1] then return 0 end
  redis.call('DEL', keys[1])
  redis.call('PUBLISH', args[2], 'released')
  return 1
end

-- Queue function. ARGV: prefix, channel, id, token, error. The task goes back to the queue at
-- once if `token` is still its lease (its holder is gone); the attempt counts.
local function q_requeue(keys, args)
  local c = q_ctx(keys, args)
  local id = args[3]
  local tk = c.tprefix .. id
  local f = redis.call('HMGET', tk, 'state', 'lease_token')
  if f[1] ~= 'leased' or f[2] ~= args[4] then return 0 end
  redis.call('ZREM', c.leased, id)
  redis.call('HSET', tk, 'last_error', args[5])
  local a = redis.call('HMGET', tk, 'attempts', 'max_attempts')
  if tonumber(a[1]) >= tonumber(a[2]) then
    q_finish(c, id, 'dead', c.dead)
  else
    q_make_ready(c, id)
  end
  q_emit(c, id)
  return 1
end

--[[ Memory partitions: a namespace with an owner, a tier and a quota. `part` hash (same
`{ns}` slot) holds the partition; its limits are copied into the namespace meta (qb, qk, dttl)
where every write checks them. The pool (`<p>:pool` hash: allocated; `<p>:partitions` set) is
in another slot and kept by pool_alloc. ]]

-- KEYS: part, meta; ARGV: name, owner, tier, quota_bytes, max_keys ('' none), default_ttl_ms ('' none)
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

-- KEYS: part, meta; ARGV: quota_bytes ('' keep), max_keys ('' keep, '0' none)
-- Returns {'ok', old quota} | {'not_found'}
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

-- Remove a partition's data, up to 500 entries per call: each key is deleted like a DELETE
-- (unindexed, accounted, logged as a `delete` with its own revision, so watchers see it). The
-- revision counter, the change log and the fence hash stay (fencing tokens keep increasing;
-- resumes stay gap-free). When nothing is left the partition record and its limits go.
-- KEYS: meta idx log ttl sz part; ARGV: ctx(6), entry key prefix (<p>:{ns}:)
-- Returns entries left (0 = done).
local function ns_drop(keys, args)
  local ctx = ctx_new(keys, args)
  local prefix = args[7]
  for _, k in ipairs(redis.call('ZRANGE', ctx.idx, 0, 499)) do
    local ekey, hkey = prefix .. 'e:' .. k, prefix .. 'h:' .. k
    local ver = redis.pcall('GETRANGE', ekey, 0, 24)
    if type(ver) == 'string' then ver = tonumber(string.match(ver, '^(%d+)\t')) else ver = nil end
    redis.call('DEL', ekey)
    unindex(ctx, k, hkey)
    log_event(ctx, bump(ctx), 'delete', k, ver or 0, nil)
  end
  local left = redis.call('ZCARD', ctx.idx)
  if left == 0 then
    redis.call('DEL', keys[6])
    redis.call('HDEL', ctx.meta, 'qb', 'qk', 'dttl')
  end
  return left
end

-- Exact recount of a namespace's accounted bytes from its per-key sizes (one slot, so a
-- consistent snapshot), correcting `bytes` if it drifted. KEYS: meta, sz. Returns the drift
-- (stored minus recounted). Meant for partitions, whose size hash is bounded by max_keys/quota.
local function ns_recount(keys, args)
  local total = 0
  local vals = redis.call('HVALS', keys[2])
  for _, v in ipairs(vals) do total = total + tonumber(v) end
  local stored = tonumber(redis.call('HGET', keys[1], 'bytes') or '0')
  if stored ~= total then redis.call('HSET', keys[1], 'bytes', total) end
  return stored - total
end

-- The pool keeps a ledger: field <name> = bytes allocated to that partition, `allocated` =
-- their sum. Setting an allocation is absolute (not a delta), so a repeated or concurrent call
-- cannot count twice. KEYS: pool, partitions; ARGV: name, bytes (0 = release), capacity,
-- 'check' | 'force' (force: no capacity check; upkeep repairing the ledger).
-- Returns {'ok', allocated} | {'exhausted', allocated}
local function pool_set(keys, args)
  local name, want, cap = args[1], tonumber(args[2]), tonumber(args[3])
  local old = tonumber(redis.call('HGET', keys[1], name) or '0')
  local allocated = tonumber(redis.call('HGET', keys[1], 'allocated') or '0')
  local delta = want - old
  if delta > 0 and args[4] ~= 'force' and allocated + delta > cap then
    return {'exhausted', allocated}
  end
  if want == 0 then
    redis.call('HDEL', keys[1], name)
    redis.call('SREM', keys[2], name)
  else
    redis.call('HSET', keys[1], name, want)
    redis.call('SADD', keys[2], name)
  end
  allocated = redis.call('HINCRBY', keys[1], 'allocated', delta)
  return {'ok', allocated}
end


local function swarmstate_version()
  return LIBRARY_VERSION
end

redis.register_function('kv_put', kv_put)
redis.register_function('kv_delete', kv_delete)
redis.register_function('kv_rollback', kv_rollback)
redis.register_function('kv_incr', kv_incr)
redis.register_function('kv_forget', kv_forget)
redis.register_function('kv_txn', kv_txn)
redis.register_function('kv_observe', kv_observe)
redis.register_function('kv_adopt', kv_adopt)
redis.register_function{function_name = 'swarmstate_version', callback = swarmstate_version, flags = {'no-writes'}}
redis.register_function('q_enqueue', q_enqueue)
redis.register_function('q_lease', q_lease)
redis.register_function('q_ack', q_ack)
redis.register_function('q_nack', q_nack)
redis.register_function('q_extend', q_extend)
redis.register_function('q_reap', q_reap)
redis.register_function('q_retry_dead', q_retry_dead)
redis.register_function('q_purge_dead', q_purge_dead)
redis.register_function('q_pause', q_pause)
redis.register_function('lock_acquire', lock_acquire)
redis.register_function('lock_renew', lock_renew)
redis.register_function('lock_release', lock_release)
redis.register_function('agent_register', agent_register)
redis.register_function('agent_heartbeat', agent_heartbeat)
redis.register_function('agent_state', agent_state)
redis.register_function('agent_lost', agent_lost)
redis.register_function('agent_hold', agent_hold)
redis.register_function('agent_untrack', agent_untrack)
redis.register_function('lock_free', lock_free)
redis.register_function('q_requeue', q_requeue)
redis.register_function('part_create', part_create)
redis.register_function('part_update', part_update)
redis.register_function('ns_drop', ns_drop)
redis.register_function('pool_set', pool_set)
redis.register_function('ns_recount', ns_recount)
redis.register_function{function_name = 'q_stats', callback = q_stats, flags = {'no-writes'}}
redis.register_function{function_name = 'q_dead_list', callback = q_dead_list, flags = {'no-writes'}}
