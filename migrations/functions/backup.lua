
--[[ Backups (read only). A namespace is captured in two steps (src/ops/backup.rs): its keys
are read in pages with ns_read after its revision R0 was noted; then ns_dump_fix, one atomic
call, reads every key the change log shows changed after R0 — the service names them, read
from the log just before; the function checks that the log holds no later change to a key it
was not given (else 'more', and the service calls again with those added) — together with the
namespace's revision, epoch, fencing counters and partition limits at that moment. The pages
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
-- KEYS (3+): meta log fence, then the entry and history key of each name given
-- ARGV (1+): covered (the revision up to which the names given cover every change the log
--            holds after R0), then the names
-- Returns: {'ok', revision, epoch, {fence name, token, ...}, {qb, qk, dttl}, {entry | false...}}
-- (entries in the order of the names; see dump_key) | {'more', {name...}} names the log
-- shows changed after `covered` that were not given | {'compacted', oldest revision held}
local function ns_dump_fix(keys, args)
  local covered, now = tonumber(args[1]), now_ms()
  local m = redis.call('HMGET', keys[1], 'rev', 'ep', 'qb', 'qk', 'dttl')
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
  for i = 2, #args do out[i - 1] = dump_key(keys[2 * i], keys[2 * i + 1], args[i], now) end
  return {'ok', rev, m[2] or '', redis.call('HGETALL', keys[3]), {m[3] or '', m[4] or '', m[5] or ''}, out}
end

redis.register_function{function_name = 'ns_read', callback = ns_read, flags = {'no-writes'}}
redis.register_function{function_name = 'ns_dump_fix', callback = ns_dump_fix, flags = {'no-writes'}}
