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
ARGV[1..4] = log_maxlen, history_versions, agent id ('' = none), change reason ('' = none).
Checks come first; nothing is written until every check has passed.
]]

local LIBRARY_VERSION = '2'
local MAX_SAFE = 9007199254740991

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ctx_new(keys, args)
  return {
    meta = keys[1], idx = keys[2], log = keys[3], ttl = keys[4], sz = keys[5],
    maxlen = args[1], hist_n = tonumber(args[2]), agent = args[3], reason = args[4],
    now = now_ms(),
  }
end

local function fmt(n)
  return string.format('%d', n)
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
  local old = redis.call('GET', ekey)
  local h = nil
  if old then h = head_of(old) end
  if not h then reconcile_missing(ctx, key, hkey) end
  local ver = h and h.ver
  if expect ~= nil then
    if (expect == 0 and ver) or (expect == -1 and not ver) or (expect > 0 and ver ~= expect) then
      return {'version_mismatch', ver or 0}
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
  local ver = version_of(ekey)
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
-- ARGV: ctx(4), key, value, metadata ('' = none), ttl_ms ('' | '-1' keep | n), expect ('' | '0' | '-1' | n)
local function kv_put(keys, args)
  local ctx = ctx_new(keys, args)
  return put_core(ctx, args[5], keys[6], keys[7], args[6], args[7], parse_ttl(args[8]), parse_expect(args[9]))
end

-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(4), key, expect ('' | n)
local function kv_delete(keys, args)
  local ctx = ctx_new(keys, args)
  return delete_core(ctx, args[5], keys[6], keys[7], parse_expect(args[6]))
end

-- Writes a retained past version's value and metadata as a new version (TTL kept).
-- KEYS: meta idx log ttl sz entry hist
-- ARGV: ctx(4), key, version
-- Returns like kv_put, or {'not_found'} (no entry) / {'version_not_found'}.
local function kv_rollback(keys, args)
  local ctx = ctx_new(keys, args)
  local key, ekey, hkey = args[5], keys[6], keys[7]
  local want = tonumber(args[6])
  local cur = redis.call('GET', ekey)
  local h = cur and head_of(cur)
  if not h then
    reconcile_missing(ctx, key, hkey)
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
-- ARGV: ctx(4), key, by, ttl_ms ('' = none; applied only when the increment creates the counter)
-- Returns {'ok', value, ver, crev, mrev, ct, ut, exp, created} | {'not_a_counter'} | {'overflow'}.
local function kv_incr(keys, args)
  local ctx = ctx_new(keys, args)
  local key, ekey, hkey = args[5], keys[6], keys[7]
  local by = tonumber(args[6])
  local cur = redis.call('GET', ekey)
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
    ttl = parse_ttl(args[7])
  end
  if n > MAX_SAFE or n < -MAX_SAFE then return {'overflow'} end
  local text = fmt(n)
  local r = put_core(ctx, key, ekey, hkey, text, meta, ttl, h and h.ver or 0)
  table.insert(r, 2, text)
  return r
end

-- Reconcile one key whose entry may have been removed by Redis (expiry, eviction).
-- KEYS: meta idx log ttl sz entry hist; ARGV: ctx(4), key
-- Returns 1 when an event was recorded, 0 otherwise.
local function kv_forget(keys, args)
  local ctx = ctx_new(keys, args)
  if reconcile(ctx, args[5], keys[6], keys[7]) then return 1 end
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
-- KEYS: meta idx log ttl sz, then entry_i, hist_i per key; ARGV: ctx(4), n, (key, hint) * n
local function kv_observe(keys, args)
  local ctx = ctx_new(keys, args)
  local n = tonumber(args[5])
  local kinds = {expired = 'expire', evicted = 'evict', gone = 'external'}
  local foreign = {}
  for i = 1, n do
    local key, hint = args[4 + 2 * i], args[5 + 2 * i]
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
-- ARGV: ctx(4), key, mode 'adopt'|'drop', sha1 of the contents the caller read, value, metadata, limit
-- Returns {'ok', revision} | {'own'} | {'gone'} | {'changed'} | {'dropped'}.
local function kv_adopt(keys, args)
  local ctx = ctx_new(keys, args)
  local key, ekey, hkey = args[5], keys[6], keys[7]
  local mode, sha, value, meta, limit = args[6], args[7], args[8], args[9], tonumber(args[10])
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
-- ARGV: ctx(4), nkeys, key_1..key_n,
--       ncmp, (ki, kind 'version'|'exists'|'value', arg) * ncmp,
--       nsucc, (op 'put'|'delete'|'get', ki, value, metadata, ttl) * nsucc,
--       nfail, (same) * nfail
-- Returns {succeeded 0|1, revision, results...}; a result is
--   {'put', ver, mrev, created} | {'delete', found 0|1} | {'get', record or false}.
local function kv_txn(keys, args)
  local ctx = ctx_new(keys, args)
  local p = 5
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
      local cur = redis.call('GET', ek(ki))
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
      results[i] = {'get', redis.call('GET', ek(ki))}
    end
  end
  local rev = tonumber(redis.call('HGET', ctx.meta, 'rev') or '0')
  local out = {ok and 1 or 0, rev}
  for i = 1, #results do out[#out + 1] = results[i] end
  return out
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
