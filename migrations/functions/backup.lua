
--[[ Backups (read only). A namespace is captured in two steps: ns_dump pages through its
live keys in index order, each page atomic at the revision it returns; then ns_dump_fix, one
atomic call, reads every key the change log shows changed after the first page's revision,
with the namespace's revision, epoch, fencing counters and partition limits at that moment.
The pages with the fixed keys replaced are exactly the namespace at ns_dump_fix's revision:
a key not in the log after the first page did not change during the capture, so its page read
it as it is at the end. Needs the change log to still hold every revision after the first
page (else 'compacted': the capture starts again).
]]

-- One key as captured: {key, record, {version, record, ...} of its history, ms to live (-1 =
-- no TTL)}; false when it has no entry of ours (deleted, or an expired one not yet reaped).
local function dump_key(base, key, now)
  local rec = redis.call('GET', base .. 'e:' .. key)
  if not rec then return false end
  local exp = string.match(rec, '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)\t')
  local left = -1
  if exp and exp ~= '' then
    left = tonumber(exp) - now
    if left <= 0 then return false end
  end
  return {key, rec, redis.call('HGETALL', base .. 'h:' .. key), left}
end

-- ns_dump: a page of the namespace's live keys after `after` in index order (read only).
-- KEYS (5): meta idx log ttl sz
-- ARGV (3): key prefix of the namespace (`<p>:{ns}:`), after ('' from the first key), count
-- Returns: {revision, epoch, last key of the page ('' when it was the last page), {key...}}
-- where each key is {key, record, history, ms to live} (see dump_key)
local function ns_dump(keys, args)
  local base, count, now = args[1], tonumber(args[3]), now_ms()
  local lo = args[2] == '' and '-' or '(' .. args[2]
  local names = redis.call('ZRANGE', keys[2], lo, '+', 'BYLEX', 'LIMIT', 0, count + 1)
  local out = {}
  for i = 1, math.min(#names, count) do
    local k = dump_key(base, names[i], now)
    if k then out[#out + 1] = k end
  end
  local m = redis.call('HMGET', keys[1], 'rev', 'ep')
  local last = ''
  if #names > count then last = names[count] end
  return {tonumber(m[1] or '0'), m[2] or '', last, out}
end

-- ns_dump_fix: the keys changed after revision `from`, read atomically with the namespace's
-- figures (read only).
-- KEYS (6): meta idx log ttl sz fence
-- ARGV (3): key prefix of the namespace, from (revision), most keys to read
-- Returns: {'ok', revision, epoch, {fence name, token, ...}, {qb, qk, dttl}, {{key, entry}...}}
-- where entry is as in dump_key or false (absent at the end) | {'compacted', oldest revision
-- the log holds} | {'too_many', changed keys}
local function ns_dump_fix(keys, args)
  local base, from, most, now = args[1], tonumber(args[2]), tonumber(args[3]), now_ms()
  local m = redis.call('HMGET', keys[1], 'rev', 'ep', 'qb', 'qk', 'dttl')
  local rev = tonumber(m[1] or '0')
  local changed, seen = {}, {}
  if rev > from then
    local first = redis.call('XRANGE', keys[3], '-', '+', 'COUNT', 1)
    local oldest = first[1] and tonumber(string.match(first[1][1], '^0%-(%d+)$')) or (rev + 1)
    if oldest > from + 1 then return {'compacted', oldest} end
    local entries = redis.call('XRANGE', keys[3], '0-' .. fmt(from + 1), '+')
    for _, e in ipairs(entries) do
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'key' and not seen[f[i + 1]] then
          seen[f[i + 1]] = true
          changed[#changed + 1] = f[i + 1]
          if #changed > most then return {'too_many', #changed} end
        end
      end
    end
  end
  local out = {}
  for _, key in ipairs(changed) do out[#out + 1] = {key, dump_key(base, key, now)} end
  return {'ok', rev, m[2] or '', redis.call('HGETALL', keys[6]), {m[3] or '', m[4] or '', m[5] or ''}, out}
end

redis.register_function{function_name = 'ns_dump', callback = ns_dump, flags = {'no-writes'}}
redis.register_function{function_name = 'ns_dump_fix', callback = ns_dump_fix, flags = {'no-writes'}}
