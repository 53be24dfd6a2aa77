#!lua name=swarmstate
--[[
swarmstate functions library: every state-changing operation, one atomic call each.

Kept as one file per area under migrations/functions/ and concatenated, in the order
src/store/migrate.rs lists them, into the one library the service loads at start-up
(FUNCTION LOAD REPLACE, on every primary in cluster mode) whenever `swarmstate_version`
answers something other than LIBRARY_VERSION below; the Rust side keeps the same number in
`store::migrate::LIBRARY_VERSION`.

Every registered function opens with a header the service's tests read:
  -- KEYS (n): the keys, all passed in KEYS ("5+2n": five, then pairs)
  -- ARGV (n): the arguments
  -- Returns: the reply
  -- Refusals: status words that refuse the call (the service turns them into errors)
Its Rust wrapper (src/store/*.rs) declares the same counts and refusals; a unit test and
debug builds check that they agree.

Rules every function keeps:
- Checks first: a refused call (precondition, quota, fencing token, lease) writes nothing,
  the namespace revision included. The one write a read may make is recording what Redis or
  another client already did (an expired, evicted or foreign entry found on the way), and only
  when the call goes on to write anyway or answers that the key is gone.
- Every key is passed in KEYS, built by src/store/keys.rs. The exceptions are keys whose
  names the function only learns from the data, under a prefix passed in ARGV that carries
  the same hash tag: task hashes (`<p>:{q:<queue>}:t:<id>`, ids found in the queue's sets).
]]

local LIBRARY_VERSION = '20'
local MAX_SAFE = 9007199254740991

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n)
  return string.format('%d', n)
end

-- swarmstate_version: the library's version (read-only).
-- KEYS (0): -
-- ARGV (0): -
-- Returns: LIBRARY_VERSION
local function swarmstate_version()
  return LIBRARY_VERSION
end

redis.register_function{function_name = 'swarmstate_version', callback = swarmstate_version, flags = {'no-writes'}}
