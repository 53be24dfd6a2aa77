
--[[ Key/value. Namespace keys (all share the `{ns}` hash tag; see src/store/keys.rs):
  meta  hash    rev = namespace revision, ep = epoch of this history (set at revision 1),
                bytes = bytes used by live entries;
                qb / qk / dttl = a partition's quota bytes, max keys, default TTL
  idx   zset    every live key, score 0, ordered by byte value (ZRANGEBYLEX listing)
  log   stream  change log, one entry per revision with id 0-<revision>, capped (MAXLEN ~);
                fields k (put/delete/expire/evict/external), key, ver, ts, v?, a?, r?
  ttl   zset    key -> expiry (unix ms) for keys with a TTL, so expiries can be reconciled
  sz    hash    key -> accounted size (#key + #value + #metadata)
  e:<k> string  the entry as one record (below); PXAT set when it has a TTL
  h:<k> hash    past versions of the entry: field <version> -> record
  fence hash    lock name -> last fencing token granted (see locks.lua)

record = ver \t crev \t mrev \t ct \t ut \t exp \t sz \t agent \t reason \n metadata \n value
  ct/ut/exp are unix ms (exp '' without TTL), sz the accounted size; agent ids and reasons
  never hold control characters (the service refuses them), metadata is '' when absent.

Every namespace function takes KEYS[1..5] = meta, idx, log, ttl, sz and ARGV[1..6] = ctx:
log_maxlen, history_versions, agent id ('' = none), change reason ('' = none), fencing lock
name and token ('' = none; from `x-fencing-token: <lock>:<n>`). Writes that honour a fencing
token also take the namespace's `fence` hash in KEYS.
]]

local function ctx_new(keys, args, fence)
  return {
    meta = keys[1], idx = keys[2], log = keys[3], ttl = keys[4], sz = keys[5], fence = fence,
    maxlen = args[1], hist_n = tonumber(args[2]), agent = args[3], reason = args[4],
    fence_name = args[5], fence_n = args[6],
    now = now_ms(),
  }
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

-- The next revision. Revision 1 starts a new history of the namespace: it gets a new epoch
-- (meta `ep`, the server time in microseconds), so readers can tell a history that was lost
-- and started again (Redis restarted without persistence, FLUSHALL) from the one they knew.
local function bump(ctx)
  local rev = redis.call('HINCRBY', ctx.meta, 'rev', 1)
  if rev == 1 then
    local t = redis.call('TIME')
    redis.call('HSET', ctx.meta, 'ep', t[1] .. string.format('%06d', tonumber(t[2])))
  end
  return rev
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

-- Called when `key` has no entry of ours. If it is still indexed, something other than this
-- library removed the entry: record that with a revision of its own, as `kind` when the
-- caller knows it (from a keyspace notification: expire / evict / external), otherwise as
-- `expire` when its TTL has passed and `evict` when not. Idempotent: a second call finds the
-- key unindexed and does nothing, so several service replicas relaying the same notification
-- record it once.
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

-- The record at `ekey` without changing anything: the string (false when absent), and
-- whether a value of another Redis type is there (only another client can have put it).
local function peek_rec(ekey)
  local v = redis.pcall('GET', ekey)
  if type(v) == 'table' and v.err then return false, true end
  return v, false
end

-- Record that the entry of `key` is not ours before a write or a not-found answer: gone
-- (expired or evicted), or something another client put there (a string that is not a record,
-- or a value of another type), which is removed.
local function repair(ctx, key, ekey, hkey, rec, foreign)
  if foreign or rec then redis.call('DEL', ekey) end
  reconcile_missing(ctx, key, hkey, (foreign or rec) and 'external' or nil)
end

-- The record at `ekey` for a call that reads it and goes on (txn gets): a foreign type is
-- removed and recorded as an `external` change.
local function get_rec(ctx, key, ekey, hkey)
  local v, foreign = peek_rec(ekey)
  if foreign then repair(ctx, key, ekey, hkey, false, true) end
  return v
end

-- Parse a record's header: ver, crev, ct, exp (nil without TTL), sz.
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

-- x-fencing-token: the write carries lock `fence_name`'s token `fence_n`, which must still be
-- the newest token that lock has granted. The lock lives in the same namespace (same slot), so
-- the check is atomic with the write. Returns the refusal, or nil.
local function fence_stale(ctx)
  if ctx.fence_name == nil or ctx.fence_name == '' then return nil end
  local cur = tonumber(redis.call('HGET', ctx.fence, ctx.fence_name) or '0')
  if cur ~= tonumber(ctx.fence_n) then return {'stale_fencing_token', cur} end
  return nil
end

-- The write of one entry, every check first.
-- expect: nil = unconditional, 0 = must be absent, -1 = must exist, n > 0 = version must be n.
-- ttl: nil = no TTL, -1 = keep the current expiry, n > 0 = expire n ms from now.
-- Returns {'ok', ver, crev, mrev, ct, ut, exp|'', created} | {'version_mismatch', current} |
-- {'quota_exceeded', 'bytes'|'keys', used, limit}.
local function put_core(ctx, key, ekey, hkey, value, meta, ttl, expect)
  local old, foreign = peek_rec(ekey)
  local h = nil
  if old then h = head_of(old) end
  -- No record of ours but still indexed (expired, evicted, deleted or overwritten by another
  -- client): its accounted size is freed when that is recorded, after the checks.
  local stale_sz = nil
  if not h and redis.call('ZSCORE', ctx.idx, key) then
    stale_sz = tonumber(redis.call('HGET', ctx.sz, key) or '0')
  end
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
  local size = #key + #value + #meta
  local oldsz = h and h.sz or 0
  if (lim.qb or lim.qk) and not ctx.quota_checked then
    -- A write into a partition may not pass its quota (growth only: a write that shrinks usage
    -- is allowed even when a lowered quota is already passed).
    if lim.qb and size > oldsz then
      local used = tonumber(redis.call('HGET', ctx.meta, 'bytes') or '0') - (stale_sz or 0)
      if used + size - oldsz > lim.qb then return {'quota_exceeded', 'bytes', used, lim.qb} end
    end
    if lim.qk and not h then
      local n = redis.call('ZCARD', ctx.idx)
      if stale_sz then n = n - 1 end
      if n + 1 > lim.qk then return {'quota_exceeded', 'keys', n, lim.qk} end
    end
  end
  -- Every check passed: record what was found in the entry's place, then write.
  if not h then repair(ctx, key, ekey, hkey, old, foreign) end
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

-- The delete of one entry. An entry already gone (or not ours) is recorded as such and
-- answered not_found.
-- Returns {'ok', revision, deleted_version} | {'not_found'} | {'version_mismatch', current}.
local function delete_core(ctx, key, ekey, hkey, expect)
  local rec, foreign = peek_rec(ekey)
  local ver = rec and tonumber(string.match(rec, '^(%d+)\t'))
  if not ver then
    repair(ctx, key, ekey, hkey, rec, foreign)
    return {'not_found'}
  end
  if expect ~= nil and expect ~= -1 and expect ~= ver then return {'version_mismatch', ver} end
  local rev = bump(ctx)
  redis.call('DEL', ekey)
  unindex(ctx, key, hkey)
  log_event(ctx, rev, 'delete', key, ver, nil)
  return {'ok', rev, ver}
end

-- The context of a single-entry write that honours x-fencing-token (KEYS[8] is the
-- namespace's fence hash), and its refusal when the token is stale.
local function fenced_entry(keys, args)
  local ctx = ctx_new(keys, args, keys[8])
  return ctx, fence_stale(ctx)
end

local function parse_opt(s)
  if s == nil or s == '' then return nil end
  return tonumber(s)
end

-- kv_put: create or replace an entry, optionally conditional.
-- KEYS (8): meta idx log ttl sz entry hist fence
-- ARGV (11): ctx(6), key, value, metadata ('' = none), ttl_ms ('' | '-1' keep | n), expect ('' | '0' | '-1' | n)
-- Returns: {'ok', ver, crev, mrev, ct, ut, exp|'', created 0|1} | {'version_mismatch', current}
-- Refusals: quota_exceeded, stale_fencing_token
local function kv_put(keys, args)
  local ctx, stale = fenced_entry(keys, args)
  if stale then return stale end
  return put_core(ctx, args[7], keys[6], keys[7], args[8], args[9], parse_opt(args[10]), parse_opt(args[11]))
end

-- kv_delete: delete an entry, optionally conditional.
-- KEYS (8): meta idx log ttl sz entry hist fence
-- ARGV (8): ctx(6), key, expect ('' | '-1' | n)
-- Returns: {'ok', revision, deleted_version} | {'not_found'} | {'version_mismatch', current}
-- Refusals: stale_fencing_token
local function kv_delete(keys, args)
  local ctx, stale = fenced_entry(keys, args)
  if stale then return stale end
  return delete_core(ctx, args[7], keys[6], keys[7], parse_opt(args[8]))
end

-- kv_rollback: write a retained past version's value and metadata as a new version (TTL kept).
-- KEYS (8): meta idx log ttl sz entry hist fence
-- ARGV (8): ctx(6), key, version
-- Returns: {'ok', ver, crev, mrev, ct, ut, exp|'', created, value, metadata} | {'not_found'} | {'version_not_found'}
-- Refusals: quota_exceeded, stale_fencing_token
local function kv_rollback(keys, args)
  local ctx, stale = fenced_entry(keys, args)
  if stale then return stale end
  local key, ekey, hkey = args[7], keys[6], keys[7]
  local want = tonumber(args[8])
  local cur, foreign = peek_rec(ekey)
  local h = cur and head_of(cur)
  if not h then
    repair(ctx, key, ekey, hkey, cur, foreign)
    return {'not_found'}
  end
  local rec = cur
  if want ~= h.ver then
    rec = redis.call('HGET', hkey, fmt(want))
    if not rec then return {'version_not_found'} end
  end
  local meta, value = body_of(rec)
  local r = put_core(ctx, key, ekey, hkey, value, meta, -1, h.ver)
  if r[1] ~= 'ok' then return r end
  r[#r + 1] = value
  r[#r + 1] = meta
  return r
end

-- kv_incr: add to an integer counter (created at `by` when absent).
-- KEYS (8): meta idx log ttl sz entry hist fence
-- ARGV (9): ctx(6), key, by, ttl_ms ('' = none; applied only when the increment creates the counter)
-- Returns: {'ok', value, ver, crev, mrev, ct, ut, exp|'', created} | {'not_a_counter'} | {'overflow'}
-- Refusals: quota_exceeded, stale_fencing_token
local function kv_incr(keys, args)
  local ctx, stale = fenced_entry(keys, args)
  if stale then return stale end
  local key, ekey, hkey = args[7], keys[6], keys[7]
  local by = tonumber(args[8])
  local cur = peek_rec(ekey)
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
    ttl = parse_opt(args[9])
  end
  if n > MAX_SAFE or n < -MAX_SAFE then return {'overflow'} end
  local text = fmt(n)
  local r = put_core(ctx, key, ekey, hkey, text, meta, ttl, h and h.ver or 0)
  if r[1] ~= 'ok' then return r end
  table.insert(r, 2, text)
  return r
end

-- kv_forget: record one key whose entry Redis removed (expiry, eviction), for the reconciler.
-- KEYS (7): meta idx log ttl sz entry hist
-- ARGV (7): ctx(6), key
-- Returns: 1 when an event was recorded, 0 otherwise
local function kv_forget(keys, args)
  local ctx = ctx_new(keys, args, nil)
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

-- kv_observe: check keys a keyspace notification named. hint: 'expired' | 'evicted' | 'gone'
-- (deleted or renamed away by a command) | 'written'. A missing entry that is still indexed is
-- recorded (expire / evict / external); an entry holding something this library did not write
-- is returned, and the caller adopts it with kv_adopt. Idempotent across replicas.
-- KEYS (5+2n): meta idx log ttl sz, then entry_i, hist_i per key
-- ARGV (7+2n): ctx(6), n, (key, hint) * n
-- Returns: the keys holding foreign values
local function kv_observe(keys, args)
  local ctx = ctx_new(keys, args, nil)
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

-- kv_adopt: adopt what another Redis client wrote at an entry key as a new life of the key,
-- logged as an `external` event: version and create revision are the event's revision (above
-- any version the key had, so an old If-Match can never match again), history is cleared, the
-- Redis TTL the writer set is kept. mode 'drop' removes a value that cannot be adopted (not a
-- string, or larger than `limit` bytes) and logs an external delete if it was indexed.
-- KEYS (7): meta idx log ttl sz entry hist
-- ARGV (12): ctx(6), key, mode 'adopt'|'drop', sha1 of the contents the caller read, value, metadata, limit
-- Returns: {'ok', revision} | {'own'} | {'gone'} | {'changed'} | {'dropped'}
local function kv_adopt(keys, args)
  local ctx = ctx_new(keys, args, nil)
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

-- kv_txn: compare-then-apply transaction, all-or-nothing. The compares, the fencing token and
-- the partition quota of the branch's end state are all checked before anything is written.
-- KEYS (6+2n): meta idx log ttl sz fence, then entry_i, hist_i for each distinct key i (1-based)
-- ARGV (10+n): ctx(6), nkeys, key_1..key_n,
--       ncmp, (ki, kind 'version'|'exists'|'value', arg) * ncmp,
--       nsucc, (op 'put'|'delete'|'get', ki, value, metadata, ttl) * nsucc,
--       nfail, (same) * nfail
-- Returns: {succeeded 0|1, revision, results...}; a result is
--   {'put', ver, mrev, created} | {'delete', found 0|1} | {'get', record or false}
-- Refusals: quota_exceeded, stale_fencing_token
local function kv_txn(keys, args)
  local ctx = ctx_new(keys, args, keys[6])
  local stale = fence_stale(ctx)
  if stale then return stale end
  local p = 7
  local nkeys = tonumber(args[p]); p = p + 1
  local names = {}
  for i = 1, nkeys do names[i] = args[p]; p = p + 1 end
  local function ek(i) return keys[6 + 2 * i - 1] end
  local function hk(i) return keys[6 + 2 * i] end

  -- What each key holds now, read without writing: the header of a record of ours (h), or
  -- else whether the key is still indexed (its entry vanished or was overwritten behind the
  -- service's back), a string that is not a record (str) or a value of another type (foreign).
  local found = {}
  for i = 1, nkeys do
    local head = redis.pcall('GETRANGE', ek(i), 0, 255)
    local f = {}
    if type(head) == 'table' and head.err then
      f.foreign = true
    elseif head ~= '' then
      f.str = true
      f.h = head_of(head)
    end
    if not f.h then f.indexed = redis.call('ZSCORE', ctx.idx, names[i]) ~= false end
    found[i] = f
  end

  local ok = true
  local ncmp = tonumber(args[p]); p = p + 1
  for _ = 1, ncmp do
    local ki, kind, arg = tonumber(args[p]), args[p + 1], args[p + 2]
    p = p + 3
    if ok then
      local h = found[ki].h
      local ver = h and h.ver or 0
      if kind == 'version' then
        ok = (ver == tonumber(arg))
      elseif kind == 'exists' then
        ok = ((ver > 0) == (arg == '1'))
      elseif kind == 'value' then
        local v = nil
        if h then
          local _meta
          _meta, v = body_of(redis.call('GET', ek(ki)))
        end
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
      ops[i] = {args[p], tonumber(args[p + 1]), args[p + 2], args[p + 3], parse_opt(args[p + 4])}
      p = p + 5
    end
    return ops
  end
  local succ = read_ops()
  local fail = read_ops()
  local ops = fail
  if ok then ops = succ end

  -- Partition quota: the transaction's end state may not pass it; checked before any write.
  -- Entries not ours but still indexed count as already gone (they are recorded so below).
  local lim = limits(ctx)
  if lim.qb or lim.qk then
    local bytes0 = tonumber(redis.call('HGET', ctx.meta, 'bytes') or '0')
    local keys0 = redis.call('ZCARD', ctx.idx)
    local cur = {}
    for i = 1, nkeys do
      if found[i].indexed then
        bytes0 = bytes0 - tonumber(redis.call('HGET', ctx.sz, names[i]) or '0')
        keys0 = keys0 - 1
        cur[i] = false
      end
    end
    local bytes, count = bytes0, keys0
    for _, op in ipairs(ops) do
      local ki = op[2]
      if cur[ki] == nil then
        local sz = redis.call('HGET', ctx.sz, names[ki])
        cur[ki] = sz and tonumber(sz) or false
      end
      if op[1] == 'put' then
        local size = #names[ki] + #op[3] + #op[4]
        if cur[ki] then bytes = bytes - cur[ki] else count = count + 1 end
        bytes = bytes + size
        cur[ki] = size
      elseif op[1] == 'delete' and cur[ki] then
        bytes = bytes - cur[ki]
        count = count - 1
        cur[ki] = false
      end
    end
    if lim.qb and bytes > lim.qb and bytes > bytes0 then return {'quota_exceeded', 'bytes', bytes0, lim.qb} end
    if lim.qk and count > lim.qk and count > keys0 then return {'quota_exceeded', 'keys', keys0, lim.qk} end
    ctx.quota_checked = true
  end

  -- Every check passed: record what was found in the place of entries of ours (a value of
  -- another type is removed wherever it is), then apply the branch.
  for i = 1, nkeys do
    local f = found[i]
    if not f.h and (f.indexed or f.foreign) then repair(ctx, names[i], ek(i), hk(i), f.str, f.foreign) end
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

redis.register_function('kv_put', kv_put)
redis.register_function('kv_delete', kv_delete)
redis.register_function('kv_rollback', kv_rollback)
redis.register_function('kv_incr', kv_incr)
redis.register_function('kv_forget', kv_forget)
redis.register_function('kv_txn', kv_txn)
redis.register_function('kv_observe', kv_observe)
redis.register_function('kv_adopt', kv_adopt)
