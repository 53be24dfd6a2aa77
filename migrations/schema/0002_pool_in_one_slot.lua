--[[
Key-schema migration 0002: the partition pool in one cluster slot (see src/store/keys.rs).

Schema 1 kept the pool as <prefix>:pool (a hash: partition name -> bytes, plus the sum in a
field `allocated`, which a partition named "allocated" would have overwritten) and
<prefix>:partitions (a set of the names). They lived in different slots, so on Redis Cluster
pool_set could never run. Schema 2 keeps <prefix>:{g:pool}:ledger (name -> bytes only) and
<prefix>:{g:pool}:total (the sum).

Run by the migration runner (src/store/migrate.rs) with
  KEYS[1] = <prefix>:schema   ARGV[1] = <prefix>   ARGV[2] = 2   ARGV[3] = the Redis mode
On Redis Cluster there is nothing to move (the schema-1 keys could never be written there), and
a script may not touch keys of other slots, so it only records the version.
Returns 'ok'.
]]
if ARGV[3] == 'cluster' then
  return 'ok'
end
local p = ARGV[1]
local old_pool, old_names = p .. ':pool', p .. ':partitions'
local ledger, total = p .. ':{g:pool}:ledger', p .. ':{g:pool}:total'
if redis.call('EXISTS', old_pool) == 1 then
  local flat = redis.call('HGETALL', old_pool)
  local sum = 0
  for i = 1, #flat, 2 do
    local name, bytes = flat[i], tonumber(flat[i + 1]) or 0
    if name ~= 'allocated' and bytes > 0 then
      redis.call('HSET', ledger, name, bytes)
      sum = sum + bytes
    end
  end
  -- The sum is recomputed from the entries: the old `allocated` field may have been clobbered.
  redis.call('SET', total, sum)
  redis.call('DEL', old_pool)
end
redis.call('DEL', old_names)
return 'ok'
