
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

-- agent_register: register (or re-register) an agent; it starts `initializing`.
-- KEYS (2): agent held
-- ARGV (4): id, capabilities JSON, metadata JSON, heartbeat_ttl_ms
-- Returns: the agent's fields
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

-- agent_heartbeat: the agent stays alive for another heartbeat_ttl_ms.
-- KEYS (1): agent
-- ARGV (0): -
-- Returns: {'ok', fields} | {'not_found'} | {'gone', state}
local function agent_heartbeat(keys, args)
  local f = redis.call('HMGET', keys[1], 'state', 'heartbeat_ttl_ms')
  if not f[1] then return {'not_found'} end
  if f[1] == 'lost' or f[1] == 'terminated' then return {'gone', f[1]} end
  local now = now_ms()
  redis.call('HSET', keys[1], 'last_heartbeat', now, 'deadline', now + tonumber(f[2]))
  return {'ok', redis.call('HGETALL', keys[1])}
end

-- agent_state: a lifecycle transition.
-- KEYS (1): agent
-- ARGV (1): new state
-- Returns: {'ok', fields} | {'not_found'} | {'invalid', current}
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

-- agent_lost: mark the agent lost if its deadline has passed, handing back what it held.
-- KEYS (2): agent held
-- ARGV (0): -
-- Returns: {'lost', held members...} | {'alive'} | {'skip'}
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

-- agent_untrack: stop heartbeat checks for an agent that was found lost or gone, unless it
-- registered or heartbeat again meanwhile (its deadline moved to the future).
-- KEYS (1): agents (zset id -> deadline)
-- ARGV (1): id
-- Returns: 1 when untracked, 0 otherwise
local function agent_untrack(keys, args)
  local s = redis.call('ZSCORE', keys[1], args[1])
  if s and tonumber(s) <= now_ms() then
    redis.call('ZADD', keys[1], 'inf', args[1])
    return 1
  end
  return 0
end

-- agent_hold: record resources the agent holds, if it exists and is not lost.
-- KEYS (2): agent held
-- ARGV (1+n): members
-- Returns: members added
local function agent_hold(keys, args)
  local st = redis.call('HGET', keys[1], 'state')
  if not st or st == 'lost' or st == 'terminated' then return 0 end
  return redis.call('SADD', keys[2], unpack(args))
end

redis.register_function('agent_register', agent_register)
redis.register_function('agent_heartbeat', agent_heartbeat)
redis.register_function('agent_state', agent_state)
redis.register_function('agent_lost', agent_lost)
redis.register_function('agent_hold', agent_hold)
redis.register_function('agent_untrack', agent_untrack)
