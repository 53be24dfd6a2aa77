
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
  cap        list  while a backup captures the queue: the ids of tasks changed since it began
             (RPUSHX: nothing is written when no capture runs)
  t:<id>     hash  the task
Task ids are the queue's sequence numbers. Every state change PUBLISHes a small JSON summary on
the queue's channel (ARGV[2]) — it wakes long-polling leases and feeds `queue` watches.
Functions take KEYS = the ten keys above and ARGV[1] = task key prefix, ARGV[2] = channel.
Task keys are ARGV[1] .. id (same slot): the ids are found in the sets above.
]]

local Q_SHIFT = 562949953421312 -- 2^49: priorities 0..9 times this plus a sequence stay below 2^53
local Q_MAX_DELAY = 86400000 -- longest retry delay: one day

local function q_ctx(keys, args)
  return {meta = keys[1], ready = keys[2], age = keys[3], delayed = keys[4], retry = keys[5],
          leased = keys[6], completed = keys[7], dead = keys[8], idem = keys[9], cap = keys[10],
          tprefix = args[1], channel = args[2], now = now_ms()}
end

-- A task changed or went: noted for a backup capturing the queue (a no-op when none runs).
-- pcall: a Redis ACL from before backups lacks RPUSHX, and queue operations must go on
-- working under it (a capture then fails at q_dump_begin, which needs RPUSH).
local function q_changed(c, id)
  redis.pcall('RPUSHX', c.cap, id)
end

local function q_emit(c, id)
  local f = redis.call('HMGET', c.tprefix .. id, 'state', 'attempts', 'max_attempts', 'priority',
                       'run_at', 'lease_owner', 'last_error')
  local ev = {id = id, state = f[1], attempts = tonumber(f[2]), max_attempts = tonumber(f[3]),
              priority = tonumber(f[4]), run_at = tonumber(f[5]), time = c.now}
  if f[6] and f[6] ~= '' then ev.lease_owner = f[6] end
  if f[7] and f[7] ~= '' then ev.last_error = f[7] end
  redis.call('PUBLISH', c.channel, cjson.encode(ev))
  q_changed(c, id)
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
  q_changed(c, id)
end

-- A lease that ended without an ack or nack (it ran out, or its holder is gone): the attempt
-- counts; back to ready, or dead when it was the last one.
local function q_lease_ended(c, id, why)
  local tk = c.tprefix .. id
  redis.call('ZREM', c.leased, id)
  redis.call('HSET', tk, 'last_error', why)
  local f = redis.call('HMGET', tk, 'attempts', 'max_attempts')
  if tonumber(f[1]) >= tonumber(f[2]) then
    q_finish(c, id, 'dead', c.dead)
  else
    q_make_ready(c, id)
  end
  q_emit(c, id)
end

-- A leased task whose lease has run out.
local function q_expire_lease(c, id)
  redis.call('HINCRBY', c.meta, 'lease_expired', 1)
  q_lease_ended(c, id, 'lease expired')
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

-- q_enqueue: a new task (or, for a known idempotency key, the task it made).
-- KEYS (10): the queue's keys
-- ARGV (10): prefix, channel, payload, priority, delay_ms ('' none), run_at ('' none),
--       max_attempts, backoff_ms, idempotency key ('' none), retention_ms
-- Returns: {'created'|'exists', task fields}
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

-- q_lease: lease up to n ready tasks (due delayed tasks and expired leases first).
-- KEYS (10): the queue's keys
-- ARGV (4+n): prefix, channel, worker, lease_ms, token_1 .. token_n (one per task wanted)
-- Returns: {{task fields}...}, ms until the next task is due ('' = none), paused 0|1
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

-- x-fencing-token on an ack/nack: KEYS[11] is the lock namespace's fence hash (another slot:
-- standalone and Sentinel only). Returns the refusal, or nil.
local function q_fence(keys, name, n)
  if not name or name == '' then return nil end
  local cur = tonumber(redis.call('HGET', keys[11], name) or '0')
  if cur ~= tonumber(n) then return {'stale_fencing_token', cur} end
  return nil
end

-- The context of a call on a leased task (ARGV[3] id, ARGV[4] lease token) and the task's key;
-- or the refusal: a stale fencing token (ARGV[fence_at], ARGV[fence_at + 1], when given) or
-- a lease that is not current.
local function q_leased(keys, args, fence_at)
  local c = q_ctx(keys, args)
  local stale = q_fence(keys, args[fence_at], args[fence_at + 1])
  if stale then return c, nil, stale end
  local tk, err = q_check_lease(c, args[3], args[4])
  return c, tk, err
end

-- q_ack: complete a leased task.
-- KEYS (10+f): the queue's keys, [the lock namespace's fence hash]
-- ARGV (5+f): prefix, channel, id, token, result ('' none), [fence lock, fence token]
-- Returns: {'ok', task fields} | {'not_found'} | {'lease_lost', state}
-- Refusals: stale_fencing_token
local function q_ack(keys, args)
  local c, tk, err = q_leased(keys, args, 6)
  if not tk then return err end
  local id = args[3]
  redis.call('ZREM', c.leased, id)
  if args[5] ~= '' then redis.call('HSET', tk, 'result', args[5]) end
  q_finish(c, id, 'completed', c.completed)
  q_emit(c, id)
  return {'ok', redis.call('HGETALL', tk)}
end

-- q_nack: fail a leased task: retried after its backoff, or dead after max_attempts.
-- KEYS (10+f): the queue's keys, [the lock namespace's fence hash]
-- ARGV (6+f): prefix, channel, id, token, error, retry_delay_ms ('' = backoff), [fence lock, fence token]
-- Returns: {'ok', task fields, lease owner} | {'not_found'} | {'lease_lost', state}
-- Refusals: stale_fencing_token
local function q_nack(keys, args)
  local c, tk, err = q_leased(keys, args, 7)
  if not tk then return err end
  local id = args[3]
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

-- q_extend: extend a lease.
-- KEYS (10): the queue's keys
-- ARGV (5): prefix, channel, id, token, lease_ms
-- Returns: {'ok', task fields} | {'not_found'} | {'lease_lost', state}
local function q_extend(keys, args)
  local c, tk, err = q_leased(keys, args, 6)
  if not tk then return err end
  local id = args[3]
  local until_ms = c.now + tonumber(args[5])
  redis.call('HSET', tk, 'leased_until', until_ms)
  redis.call('ZADD', c.leased, until_ms, id)
  return {'ok', redis.call('HGETALL', tk)}
end

-- q_reap: background upkeep: due tasks made ready, expired leases reclaimed, retention applied.
-- KEYS (10): the queue's keys
-- ARGV (2): prefix, channel
-- Returns: {made ready, removed by retention}; the caller calls again while either is 1000
local function q_reap(keys, args)
  local n, cleaned = q_promote(q_ctx(keys, args), 1000, true)
  return {n, cleaned}
end

-- q_retry_dead: a dead task back to ready with its attempts reset.
-- KEYS (10): the queue's keys
-- ARGV (3): prefix, channel, id
-- Returns: {'ok', task fields} | {'not_found'}
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

-- q_purge_dead: remove up to 1000 dead tasks.
-- KEYS (10): the queue's keys
-- ARGV (2): prefix, channel
-- Returns: how many were removed
local function q_purge_dead(keys, args)
  local c = q_ctx(keys, args)
  local ids = redis.call('ZRANGE', c.dead, 0, 999)
  for _, id in ipairs(ids) do
    redis.call('ZREM', c.dead, id)
    q_remove(c, id)
  end
  return #ids
end

-- q_pause: stop or resume handing out tasks (a resume wakes waiting leases).
-- KEYS (10): the queue's keys
-- ARGV (3): prefix, channel, paused '1' | '0'
-- Returns: 1
local function q_pause(keys, args)
  local c = q_ctx(keys, args)
  redis.call('HSET', c.meta, 'paused', args[3])
  if args[3] == '0' then redis.call('PUBLISH', c.channel, '{"state":"ready","resumed":true}') end
  return 1
end

-- q_stats: counts per state and totals (read only).
-- KEYS (10): the queue's keys
-- ARGV (2): prefix, channel
-- Returns: {ready, delayed, retry, leased, completed, dead, paused, enqueued, completed total,
--   failed total, dead total, lease_expired total, oldest ready since (ms | ''), now (ms)}
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

-- A page of the tasks of sorted set `set` after a position (score as text, '' from the start,
-- and id; ties of one score are ordered by id as text, as ZRANGE orders them), lowest score
-- first: {{task fields}...}, how many the set holds, '<score>:<id>' of the page's last task when
-- more follow ('' on the last page). Ids whose hash is gone (retention ran out between the
-- range and the read) are left out.
local function q_page(c, set, after_score, after_id, count)
  local ids = {}
  if after_score == '' then
    ids = redis.call('ZRANGE', set, 0, count, 'WITHSCORES')
  else
    local score, last, skip = tonumber(after_score), after_id, 0
    while #ids < 2 * (count + 1) do
      local batch = redis.call('ZRANGE', set, score, '+inf', 'BYSCORE', 'LIMIT', skip, count + 1, 'WITHSCORES')
      if #batch == 0 then break end
      for i = 1, #batch, 2 do
        if (tonumber(batch[i + 1]) > score or batch[i] > last) and #ids < 2 * (count + 1) then
          ids[#ids + 1] = batch[i]
          ids[#ids + 1] = batch[i + 1]
        end
      end
      skip = skip + count + 1
    end
  end
  local out, cursor = {}, ''
  for i = 1, math.min(#ids, 2 * count), 2 do
    local t = redis.call('HGETALL', c.tprefix .. ids[i])
    if #t > 0 then out[#out + 1] = t end
  end
  if #ids > 2 * count then cursor = ids[2 * count] .. ':' .. ids[2 * count - 1] end
  return {out, redis.call('ZCARD', set), cursor}
end

-- q_dead_list: a page of dead tasks, oldest death first, after a position (read only).
-- KEYS (10): the queue's keys
-- ARGV (5): prefix, channel, after_score ('' from the start), after_id, count
-- Returns: see q_page
local function q_dead_list(keys, args)
  local c = q_ctx(keys, args)
  return q_page(c, c.dead, args[3], args[4], tonumber(args[5]))
end

-- The sorted set that holds the tasks of each state, and what its score is.
local Q_STATE_SETS = {ready = 'ready', delayed = 'delayed', failed = 'retry', leased = 'leased',
                      completed = 'completed', dead = 'dead'}

-- q_task_list: a page of the tasks in one state, in the order of that state's set (ready: the
-- order leases take them; delayed and failed: due time; leased: lease expiry; completed and
-- dead: when they finished), after a position (read only).
-- KEYS (10): the queue's keys
-- ARGV (6): prefix, channel, state, after_score ('' from the start), after_id, count
-- Returns: see q_page; {'bad_state'} for a state without a set
local function q_task_list(keys, args)
  local c = q_ctx(keys, args)
  local set = Q_STATE_SETS[args[3]]
  if not set then return {'bad_state'} end
  return q_page(c, c[set], args[4], args[5], tonumber(args[6]))
end

-- q_requeue: the task goes back to the queue at once if `token` is still its lease (its
-- holder, an agent, is gone); the attempt counts.
-- KEYS (10): the queue's keys
-- ARGV (5): prefix, channel, id, token, error
-- Returns: 1 when requeued, 0 otherwise
local function q_requeue(keys, args)
  local c = q_ctx(keys, args)
  local id = args[3]
  local f = redis.call('HMGET', c.tprefix .. id, 'state', 'lease_token')
  if f[1] ~= 'leased' or f[2] ~= args[4] then return 0 end
  q_lease_ended(c, id, args[5])
  return 1
end

redis.register_function('q_enqueue', q_enqueue)
redis.register_function('q_lease', q_lease)
redis.register_function('q_ack', q_ack)
redis.register_function('q_nack', q_nack)
redis.register_function('q_extend', q_extend)
redis.register_function('q_reap', q_reap)
redis.register_function('q_retry_dead', q_retry_dead)
redis.register_function('q_purge_dead', q_purge_dead)
redis.register_function('q_pause', q_pause)
redis.register_function('q_requeue', q_requeue)
redis.register_function{function_name = 'q_stats', callback = q_stats, flags = {'no-writes'}}
redis.register_function{function_name = 'q_dead_list', callback = q_dead_list, flags = {'no-writes'}}
redis.register_function{function_name = 'q_task_list', callback = q_task_list, flags = {'no-writes'}}
