
--[[ Backups (read only). A namespace is captured in two steps (src/ops/backup.rs): its keys
are read in pages with ns_read after its revision R0 was noted; then ns_dump_fix, one atomic
call, reads every key the change log shows changed after R0 — the service names them, read
from the log just before; the function checks that the log holds no later change to a key it
was not given (else 'more', and the service calls again with those added) — together with the
namespace's revision, epoch, fencing counters and partition record at that moment. The pages
with the fixed keys replaced are exactly the namespace at that revision: a key the log does
not name after R0 did not change during the capture, so its page read it as it is at the end.
Every key is passed in KEYS (entry and history of each), never built here.
]]

-- One key as captured: {key, record, {version, record, ...} of its history}; false when it
-- has no entry of ours (deleted, or an expired one not yet reaped).
local function dump_key(ekey, hkey, name, now)
  local rec = redis.call('GET', ekey)
  if not rec then return false end
  local exp = string.match(rec, '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)\t')
  if exp and exp ~= '' and tonumber(exp) <= now then return false end
  return {name, rec, redis.call('HGETALL', hkey)}
end

-- ns_read: entries and their histories, for a page of a capture (read only).
-- KEYS (2+): entry and history key of each name, in turn
-- ARGV (1+): the names of the keys, in the same order
-- Returns: {entry | false, ...} in order (see dump_key)
local function ns_read(keys, args)
  local now, out = now_ms(), {}
  for i = 1, #args do out[i] = dump_key(keys[2 * i - 1], keys[2 * i], args[i], now) end
  return out
end

-- ns_dump_fix: the keys changed after a revision, read atomically with the namespace's
-- figures (read only).
-- KEYS (4+): meta log fence part, then the entry and history key of each name given
-- ARGV (1+): covered (the revision up to which the names given cover every change the log
--            holds after R0), then the names
-- Returns: {'ok', revision, epoch, {fence name, token, ...}, {part field, value, ...}, {entry | false...}}
-- (entries in the order of the names; see dump_key) | {'more', {name...}} names the log
-- shows changed after `covered` that were not given | {'compacted', oldest revision held}
local function ns_dump_fix(keys, args)
  local covered, now = tonumber(args[1]), now_ms()
  local m = redis.call('HMGET', keys[1], 'rev', 'ep')
  local rev = tonumber(m[1] or '0')
  if rev > covered then
    local given, missing, seen = {}, {}, {}
    for i = 2, #args do given[args[i]] = true end
    local head = redis.call('XRANGE', keys[2], '-', '+', 'COUNT', 1)
    local oldest = head[1] and tonumber(string.match(head[1][1], '^0%-(%d+)$')) or (rev + 1)
    if oldest > covered + 1 then return {'compacted', oldest} end
    local entries = redis.call('XRANGE', keys[2], '0-' .. fmt(covered + 1), '+')
    for _, e in ipairs(entries) do
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'key' and not given[f[i + 1]] and not seen[f[i + 1]] then
          seen[f[i + 1]] = true
          missing[#missing + 1] = f[i + 1]
        end
      end
    end
    if #missing > 0 then return {'more', missing} end
  end
  local out = {}
  for i = 2, #args do out[i - 1] = dump_key(keys[2 * i + 1], keys[2 * i + 2], args[i], now) end
  return {'ok', rev, m[2] or '', redis.call('HGETALL', keys[3]), redis.call('HGETALL', keys[4]), out}
end

--[[ Restore (src/ops/backup.rs): the service has verified the whole file first. Then per
namespace: ns_restore_begin (a new epoch: every watcher of the namespace is told `reset`;
fencing counters raised above the backup's), batches of ns_restore_put (entries in key order)
and, in replace mode, ns_restore_delete of the keys the backup does not hold. Each call is
atomic; the restore as a whole is not (writers may write between batches). Every restored or
deleted key gets a revision of its own, logged with reason `restore`: revisions only move
forward, and a watch started after the restore from an earlier revision sees each change. ]]

-- ns_restore_begin: start restoring a namespace: a new epoch, fencing counters raised.
-- KEYS (2): meta fence
-- ARGV (1+): margin, then (lock name, the backup's last token) for each lock of the backup
-- Returns: {revision before the restore, epoch before the restore ('' none)}
local function ns_restore_begin(keys, args)
  local m = redis.call('HMGET', keys[1], 'rev', 'ep')
  local t = redis.call('TIME')
  redis.call('HSET', keys[1], 'ep', t[1] .. string.format('%06d', tonumber(t[2])), 'rev', m[1] or '0')
  local margin = tonumber(args[1])
  for i = 2, #args, 2 do
    local cur = tonumber(redis.call('HGET', keys[2], args[i]) or '0')
    redis.call('HSET', keys[2], args[i], fmt(math.max(cur, tonumber(args[i + 1])) + margin))
  end
  return {tonumber(m[1] or '0'), m[2] or ''}
end

-- One version as a record (see kv.lua): f = {ver, crev, mrev, ct, ut, exp, agent, reason, meta, value}.
local function restore_record(key, f)
  return table.concat({f[1], f[2], f[3], f[4], f[5], f[6], fmt(#key + #f[9] + #f[10]), f[7], f[8]}, '\t')
    .. '\n' .. f[9] .. '\n' .. f[10]
end

-- ns_restore_put: write a batch of a backup's entries. An entry is skipped when the key
-- already holds the same value, metadata and expiry, when it expired since the capture (in
-- replace mode a current entry of that key is deleted), and in merge mode when the current
-- entry is the same life or a newer one (create revision not lower, in the epoch the backup
-- was taken in) or was written after the restore began. A restored entry keeps the backup's
-- version (one above the current version if that is not lower), history, timestamps, expiry,
-- metadata and provenance; its create and mod revision are the revision of its restore (and
-- its history's create revision too: it is one life).
-- KEYS (5+2n): meta idx log ttl sz, then entry_i, hist_i of each entry
-- ARGV (12+): ctx(6), mode 'merge'|'replace', dry ('1' = count only), backup epoch, epoch
--             before, revision before, n, then per entry: key, ver, crev, ct, ut, exp, agent,
--             reason, meta, value, nh, then nh * (ver, crev, mrev, ct, ut, exp, agent, reason, meta, value)
-- Returns: {restored, skipped, deleted, revision}
local function ns_restore_put(keys, args)
  local ctx = ctx_new(keys, args, nil)
  local mode, dry, bep, oldep, start = args[7], args[8] == '1', args[9], args[10], tonumber(args[11])
  local n, p = tonumber(args[12]), 13
  local restored, skipped, deleted = 0, 0, 0
  for i = 1, n do
    local key, ekey, hkey = args[p], keys[4 + 2 * i], keys[5 + 2 * i]
    local e = {args[p + 1], args[p + 2], '', args[p + 3], args[p + 4], args[p + 5], args[p + 6], args[p + 7],
               args[p + 8], args[p + 9]}
    local nh = tonumber(args[p + 10])
    local hs = {}
    p = p + 11
    for j = 1, nh do
      hs[j] = {args[p], args[p + 1], args[p + 2], args[p + 3], args[p + 4], args[p + 5], args[p + 6],
               args[p + 7], args[p + 8], args[p + 9]}
      p = p + 10
    end
    local cur, foreign = peek_rec(ekey)
    local h = cur and head_of(cur)
    local skip = false
    if e[6] ~= '' and tonumber(e[6]) <= ctx.now then
      skip = true
      if mode == 'replace' and h then
        deleted = deleted + 1
        if not dry then delete_core(ctx, key, ekey, hkey, nil) end
      end
    elseif h then
      local m, v = body_of(cur)
      if m == e[9] and v == e[10] and (h.exp or '') == e[6] then
        skip = true
      elseif mode == 'merge' then
        local mrev = tonumber(string.match(cur, '^%d+\t%d+\t(%d+)\t'))
        skip = mrev > start or (oldep == bep and tonumber(h.crev) >= tonumber(e[2]))
      end
    end
    if skip then
      skipped = skipped + 1
    else
      restored = restored + 1
      if not dry then
        if not h then repair(ctx, key, ekey, hkey, cur, foreign) end
        local rev = bump(ctx)
        local ver = tonumber(e[1])
        if h and h.ver >= ver then ver = h.ver + 1 end
        e[1], e[2], e[3] = fmt(ver), fmt(rev), fmt(rev)
        local size = #key + #e[9] + #e[10]
        local oldsz = h and h.sz or 0
        if not h then redis.call('ZADD', ctx.idx, 0, key) end
        redis.call('HSET', ctx.sz, key, size)
        if size ~= oldsz then redis.call('HINCRBY', ctx.meta, 'bytes', size - oldsz) end
        redis.call('DEL', hkey)
        for j = math.max(1, nh - ctx.hist_n + 2), nh do
          -- The history is of the restored life (readers show the versions of one life).
          hs[j][2] = e[2]
          redis.call('HSET', hkey, hs[j][1], restore_record(key, hs[j]))
        end
        local rec = restore_record(key, e)
        if e[6] ~= '' then
          redis.call('SET', ekey, rec, 'PXAT', e[6])
          if nh > 0 then redis.call('PEXPIREAT', hkey, e[6]) end
          redis.call('ZADD', ctx.ttl, e[6], key)
        else
          redis.call('SET', ekey, rec)
          redis.call('ZREM', ctx.ttl, key)
        end
        log_event(ctx, rev, 'put', key, ver, e[10])
      end
    end
  end
  return {restored, skipped, deleted, tonumber(redis.call('HGET', ctx.meta, 'rev') or '0')}
end

-- ns_restore_delete: delete the keys a replace restore found that the backup does not hold,
-- each like a DELETE (its own revision, logged with reason `restore`).
-- KEYS (5+2n): meta idx log ttl sz, then entry_i, hist_i of each key
-- ARGV (8+): ctx(6), dry ('1' = count only), n, key_1 .. key_n
-- Returns: {deleted, revision}
local function ns_restore_delete(keys, args)
  local ctx = ctx_new(keys, args, nil)
  local dry, n, deleted = args[7] == '1', tonumber(args[8]), 0
  for i = 1, n do
    local key, ekey, hkey = args[8 + i], keys[4 + 2 * i], keys[5 + 2 * i]
    if dry then
      local cur = peek_rec(ekey)
      if cur and head_of(cur) then deleted = deleted + 1 end
    elseif delete_core(ctx, key, ekey, hkey, nil)[1] == 'ok' then
      deleted = deleted + 1
    end
  end
  return {deleted, tonumber(redis.call('HGET', ctx.meta, 'rev') or '0')}
end

--[[ Queues (src/ops/backup.rs). A queue is captured like a namespace, in two steps:
q_dump_begin starts its change list `cap` (KEYS[10]; every queue function appends each task it
changes or removes to it, with RPUSHX) and answers its sequence; the tasks with ids up to it
are read in windows with q_dump_page; then q_dump_fix, one atomic call, reads the queue's
figures and every task the list names, and ends the list. The windows with those tasks
replaced are exactly the queue at that moment: a task the list does not name did not change
after its window read it. Task keys are the prefix (ARGV[1]) and the id, in the queue's slot.
]]

-- The sets a task can be in, as KEYS indexes: ready age delayed retry leased completed dead.
local Q_SETS = {2, 3, 4, 5, 6, 7, 8}

-- One task as captured: {id, {field, value, ...}, {score in each of Q_SETS, or false}};
-- false when there is no such task.
local function q_dump_task(keys, prefix, id)
  local f = redis.call('HGETALL', prefix .. id)
  if #f == 0 then return false end
  local scores = {}
  for i, k in ipairs(Q_SETS) do scores[i] = redis.call('ZSCORE', keys[k], id) or false end
  return {id, f, scores}
end

-- q_dump_begin: start capturing the queue (its change list lives 10 minutes at most).
-- KEYS (10): the queue's keys
-- ARGV (2): prefix, channel
-- Returns: the queue's sequence (its highest task id so far)
local function q_dump_begin(keys, args)
  redis.call('DEL', keys[10])
  redis.call('RPUSH', keys[10], '')
  redis.call('PEXPIRE', keys[10], 600000)
  return tonumber(redis.call('HGET', keys[1], 'seq') or '0')
end

-- q_dump_page: the tasks with ids from..to (read only).
-- KEYS (10): the queue's keys
-- ARGV (4): prefix, channel, first id, last id
-- Returns: {task, ...} of the ids that exist, in id order (see q_dump_task)
local function q_dump_page(keys, args)
  local out = {}
  for id = tonumber(args[3]), tonumber(args[4]) do
    local t = q_dump_task(keys, args[1], fmt(id))
    if t then out[#out + 1] = t end
  end
  return out
end

-- q_dump_fix: the queue's figures and every task changed since q_dump_begin, read at once;
-- ends the capture.
-- KEYS (10): the queue's keys
-- ARGV (3): prefix, channel, most changed tasks taken
-- Returns: {'ok', {meta field, value, ...}, {task | {id} (gone), ...}} | {'restart'} (the list
-- expired, or more than the most tasks changed)
local function q_dump_fix(keys, args)
  local n = redis.call('LLEN', keys[10])
  if n == 0 or n - 1 > tonumber(args[3]) then
    redis.call('DEL', keys[10])
    return {'restart'}
  end
  local seen, tasks = {}, {}
  for _, id in ipairs(redis.call('LRANGE', keys[10], 1, -1)) do
    if not seen[id] then
      seen[id] = true
      tasks[#tasks + 1] = q_dump_task(keys, args[1], id) or {id}
    end
  end
  redis.call('DEL', keys[10])
  return {'ok', redis.call('HGETALL', keys[1]), tasks}
end

-- q_restore_clear: remove up to 500 of the queue's tasks (a replace restore, before its puts).
-- KEYS (10): the queue's keys
-- ARGV (2): prefix, channel
-- Returns: how many were removed (0: none is left, and the idempotency keys are gone too)
local function q_restore_clear(keys, args)
  local n = 0
  for _, k in ipairs(Q_SETS) do
    if n >= 500 then break end
    for _, id in ipairs(redis.call('ZRANGE', keys[k], 0, 499 - n)) do
      redis.call('DEL', args[1] .. id)
      for _, z in ipairs(Q_SETS) do redis.call('ZREM', keys[z], id) end
      n = n + 1
    end
  end
  if n == 0 then redis.call('DEL', keys[9]) end
  return n
end

-- q_restore_put: tasks as a backup holds them (a task of the same id is replaced), each with
-- its idempotency key and an event (a waiting lease wakes for a ready one).
-- KEYS (10): the queue's keys
-- ARGV (2+): prefix, channel, then per task: id, n, n field/value pairs, 7 scores ('' = not in
--            that set: ready age delayed retry leased completed dead)
-- Returns: how many were written
local function q_restore_put(keys, args)
  local c = q_ctx(keys, args)
  local i, n = 3, 0
  while i <= #args do
    local id, nf = args[i], tonumber(args[i + 1])
    local tk = c.tprefix .. id
    redis.call('DEL', tk)
    if nf > 0 then redis.call('HSET', tk, unpack(args, i + 2, i + 1 + 2 * nf)) end
    i = i + 2 + 2 * nf
    for s = 1, 7 do
      local z, sc = keys[Q_SETS[s]], args[i + s - 1]
      if sc ~= '' then redis.call('ZADD', z, sc, id) else redis.call('ZREM', z, id) end
    end
    i = i + 7
    local idem = redis.call('HGET', tk, 'idem')
    if idem and idem ~= '' then redis.call('HSET', c.idem, idem, id) end
    q_emit(c, id)
    n = n + 1
  end
  return n
end

-- q_restore_end: the queue's figures as the backup holds them (paused, totals); the sequence
-- becomes the higher of the current and the backup's, so no task id is used twice.
-- KEYS (10): the queue's keys
-- ARGV (2+): prefix, channel, then meta field/value pairs
-- Returns: the sequence
local function q_restore_end(keys, args)
  local seq = tonumber(redis.call('HGET', keys[1], 'seq') or '0')
  for i = 3, #args - 1, 2 do
    if args[i] == 'seq' then
      seq = math.max(seq, tonumber(args[i + 1]) or 0)
    else
      redis.call('HSET', keys[1], args[i], args[i + 1])
    end
  end
  redis.call('HSET', keys[1], 'seq', seq)
  redis.call('PUBLISH', args[2], '{"state":"ready","resumed":true}')
  return seq
end

redis.register_function{function_name = 'ns_read', callback = ns_read, flags = {'no-writes'}}
redis.register_function{function_name = 'ns_dump_fix', callback = ns_dump_fix, flags = {'no-writes'}}
redis.register_function('ns_restore_begin', ns_restore_begin)
redis.register_function('ns_restore_put', ns_restore_put)
redis.register_function('ns_restore_delete', ns_restore_delete)
redis.register_function('q_dump_begin', q_dump_begin)
redis.register_function{function_name = 'q_dump_page', callback = q_dump_page, flags = {'no-writes'}}
redis.register_function('q_dump_fix', q_dump_fix)
redis.register_function('q_restore_clear', q_restore_clear)
redis.register_function('q_restore_put', q_restore_put)
redis.register_function('q_restore_end', q_restore_end)
