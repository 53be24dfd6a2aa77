--[[
Key-schema migration 0001: the initial layout (see src/store/keys.rs).

Run once per key prefix by the migration runner (src/store/migrate.rs) with
  KEYS[1] = <prefix>:schema   ARGV[1] = <prefix>   ARGV[2] = this migration's number
Returns 'ok'. The runner records the number in <prefix>:schema after it succeeds.

The initial layout needs no data changes: it only establishes the schema version, so that
later migrations (and older binaries, which refuse a newer schema) know what they face.
]]
return 'ok'
