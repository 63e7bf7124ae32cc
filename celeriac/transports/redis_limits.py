"""The Lua scripts of the Redis engine's limits: rate turns, concurrency slots, waiting
messages and unique keys (the contract is in ``base.py``). Each runs after ``LIB`` of
``redis_scripts.py``, and judges time by the server's clock.

Key layout (``P`` is the prefix option), beside the queue keys of ``redis/__init__.py``. The
hash tag ``{k}`` keeps the keys of one limit in one cluster slot, and a unique key lives in the
slot of its queue, so that every script touches one slot::

    P limit:{k}          hash   free_at (ms: when the next turn is free), interval (as sent)
    P limit:{k}:turns    zset   claim -> ms: the turns reserved for deferred messages
    P slots:{k}          zset   holder (a lease token) -> ms: when its slot runs out
    P slots:{k}:waiting  zset   "<n>:<queue>" -> ms of its first wait: the line for a slot
    P{q}:unique:<k>      string the name of the message hash that holds the key; free once
                                that hash is gone (acknowledged, dead-lettered or purged)

Rate and slot keys expire by themselves once idle, so that an idle Redis is left empty.
``DEFER`` with a line to wait in and ``RELEASE_SLOTS`` touch a limit's keys and a queue's: on
Redis Cluster each is done in steps instead, one slot at a time (``WAIT_IN_LINE``,
``FREE_SLOT`` and ``WAKE_WAITING``).
"""

from __future__ import annotations

# KEYS: ids, ready, delayed, wake, unique (all the queue's). ARGV: base, body, priority, due ms
# ('' for now). Returns {n, 1} when published, {the holder's n, 0} when a live message holds the
# key.
PUBLISH_UNIQUE = r"""
local holder = redis.call('GET', KEYS[5])
if holder and redis.call('EXISTS', holder) == 1 then
  return {string.match(holder, 'm:(%d+)$'), 0}
end
local _, now_ms = clock()
local id = redis.call('INCR', KEYS[1])
local msg = ARGV[1] .. 'm:' .. id
redis.call('HSET', msg, 'body', ARGV[2], 'priority', ARGV[3], 'deliveries', 0, 'unique', KEYS[5])
if ARGV[4] ~= '' and tonumber(ARGV[4]) > now_ms then
  redis.call('ZADD', KEYS[3], ARGV[4], id)
else
  redis.call('ZADD', KEYS[2], score(ARGV[3], id), id)
end
notify(KEYS[4])
redis.call('SET', KEYS[5], msg)
return {id, 1}
"""

# KEYS: leased, ready, delayed, wake, message, waiting (or any key when not waiting).
# ARGV: id, token, due ms, waiting ('1'/'0'), waiting member. Returns 1, or 0 without the lease.
DEFER = r"""
local leased, ready, delayed, wake, msg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[1]
if not held(msg, ARGV[2]) then return 0 end
local _, now_ms = clock()
redis.call('ZREM', leased, id)
redis.call('HDEL', msg, 'lease')
redis.call('HINCRBY', msg, 'deliveries', -1)  -- handed back unstarted: not a delivery
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[6], 'NX', now_ms, ARGV[5])
  redis.call('PEXPIRE', KEYS[6], 3600000)  -- only wake-ups are lost: due times still hold
end
if tonumber(ARGV[3]) > now_ms then
  redis.call('ZADD', delayed, ARGV[3], id)
  notify(wake)  -- idle fetchers recompute how long to sleep
else
  make_ready(ready, wake, msg, id)
end
return 1
"""

# KEYS: limit, turns. ARGV: interval ms (compared as text), claim, grace ms.
# Returns nil to go now, else the ms of the turn reserved for the claim.
THROTTLE = r"""
local limit, turns, claim = KEYS[1], KEYS[2], ARGV[2]
local now_ms = clock() * 1000
local turn = redis.call('ZSCORE', turns, claim)
if turn then
  if tonumber(turn) > now_ms then return turn end
  redis.call('ZREM', turns, claim)
  return false
end
local interval, grace = tonumber(ARGV[1]), tonumber(ARGV[3])
local state = redis.call('HMGET', limit, 'free_at', 'interval')
local free_at = now_ms
if state[1] then
  free_at = tonumber(state[1])
  if state[2] ~= ARGV[1] then  -- the limit changed: start over, without an early turn
    redis.call('DEL', turns)
    free_at = math.min(free_at, now_ms + interval)
  end
end
redis.call('ZREMRANGEBYSCORE', turns, '-inf', '(' .. string.format('%.3f', now_ms - grace))
local mine = false
if free_at <= now_ms then
  free_at = now_ms
else
  mine = string.format('%.3f', free_at)
  redis.call('ZADD', turns, mine, claim)
  redis.call('PEXPIRE', turns, math.ceil(free_at - now_ms + grace))
end
local next_free = free_at + interval
redis.call('HSET', limit, 'free_at', string.format('%.3f', next_free), 'interval', ARGV[1])
redis.call('PEXPIRE', limit, math.ceil(next_free - now_ms + grace))
return mine
"""

# KEYS: slots. ARGV: holder, limit, ttl ms. Returns nil when held, else the ms of the soonest
# expiry.
ACQUIRE_SLOT = r"""
local _, now_ms = clock()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if mine or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return false
end
return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
"""

# KEYS: slots per item. ARGV: ttl ms, then a holder per item. Returns 1/0 per item.
RENEW_SLOTS = r"""
local _, now_ms = clock()
local ttl = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  out[i] = 0
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, now_ms + ttl, ARGV[i + 1])
    redis.call('PEXPIRE', key, ttl)
    out[i] = 1
  end
end
return out
"""

# KEYS per item: slots, waiting. ARGV: prefix, scan, then a holder per item. Frees each slot
# and makes the longest-waiting message that still waits on its key ready.
RELEASE_SLOTS = r"""
local prefix, scan = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local slots, waiting = KEYS[i * 2 - 1], KEYS[i * 2]
  redis.call('ZREM', slots, ARGV[i + 2])
  for _, member in ipairs(redis.call('ZRANGE', waiting, 0, scan - 1)) do
    local id, queue = string.match(member, '^(%d+):(.*)$')
    local base = prefix .. '{' .. queue .. '}:'
    if redis.call('ZREM', base .. 'delayed', id) == 1 then
      make_ready(base .. 'ready', base .. 'wake', base .. 'm:' .. id, id)
      break  -- it keeps its place in the line, in case it has to wait again
    end
    redis.call('ZREM', waiting, member)  -- running, woken already, or gone
  end
end
return 1
"""

# -- Redis Cluster: the steps of DEFER and RELEASE_SLOTS, one slot each ----------------------

# KEYS: waiting. ARGV: member ("<n>:<queue>"). Joins the line for a slot of the key.
WAIT_IN_LINE = r"""
local _, now_ms = clock()
redis.call('ZADD', KEYS[1], 'NX', now_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"""

# KEYS: slots, waiting. ARGV: holder, scan. Frees the holder's slot; returns the first members
# of the line, for WAKE_WAITING.
FREE_SLOT = r"""
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
"""

# KEYS: delayed, ready, wake (one queue's). ARGV: base, id. Makes the message ready if it still
# waits (is delayed): 1, else 0.
WAKE_WAITING = r"""
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
make_ready(KEYS[2], KEYS[3], ARGV[1] .. 'm:' .. ARGV[2], ARGV[2])
return 1
"""
