"""The Lua scripts of the Redis engine: every state change that must be atomic is one script.

The key layout and the meaning of each script's KEYS and ARGV are described beside each
script and in ``celeriac/transports/redis/``. Scripts judge time by the server's clock
(``redis.call('TIME')``), never the client's.
"""

from __future__ import annotations

from celeriac.transports.base import MAX_PRIORITY

# -- the scripts ---------------------------------------------------------------------

# Helpers shared by every script. Numbers reach Redis through redis.call exactly; only string
# concatenation (ids in key names) goes through Lua's "%.14g", fine below 10**14 ids.
LIB = (
    f"local MAX_PRIORITY = {MAX_PRIORITY}\n"
    + r"""
local PRIORITY_SPAN = 70368744177664  -- 2^46: room for the ids of one priority band

local function clock()  -- the server's time, in seconds and in whole milliseconds
  local t = redis.call('TIME')
  local s = tonumber(t[1]) + tonumber(t[2]) / 1000000
  return s, math.floor(s * 1000)
end

local function score(priority, id)
  return (MAX_PRIORITY - tonumber(priority)) * PRIORITY_SPAN + tonumber(id)
end

local function notify(wake)  -- one token is enough: a woken fetcher passes it on
  if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
end

-- What a key's write publishes on its channel: '=' and a small value (a waiter need not
-- read it back), or '' for a large one.
local function notice(value)
  if #value <= 4096 then return '=' .. value end
  return ''
end

local function make_ready(ready, wake, msg, id)
  redis.call('ZADD', ready, score(redis.call('HGET', msg, 'priority'), id), id)
  notify(wake)
end

local function add_event(msg, event, detail)  -- detail: JSON object text, kept as sent
  local history = redis.call('HGET', msg, 'history')
  local entry = cjson.encode(event)
  if detail and detail ~= '' then
    entry = string.sub(entry, 1, -2) .. ',"detail":' .. detail .. '}'
  end
  if history then
    history = string.sub(history, 1, -2) .. ',' .. entry .. ']'
  else
    history = '[' .. entry .. ']'
  end
  redis.call('HSET', msg, 'history', history)
end

local function free_unique(msg)  -- a unique message's key is free once it is gone
  local key = redis.call('HGET', msg, 'unique')
  if key and redis.call('GET', key) == msg then redis.call('DEL', key) end
end

local function bury(msg, id, queue, reason, now, dead, letter)  -- dead, letter: the queue's
  free_unique(msg)
  redis.call('HDEL', msg, 'lease')
  redis.call('HSET', msg, 'queue', queue, 'reason', reason, 'dead_at', string.format('%.6f', now))
  redis.call('RENAME', msg, letter)
  redis.call('ZADD', dead, now, id)
end

local function zrem_all(key, ids)  -- unpack() takes some 8,000 values at most
  for i = 1, #ids, 1000 do
    redis.call('ZREM', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end

local function held(msg, token)
  return redis.call('HGET', msg, 'lease') == token
end
"""
)

# From KEYS[k0 + 1], per item: ids (the queue's counter), ready, delayed, wake. From
# ARGV[a0 + 1], per item: base, body, priority, due ms ('' for now). Returns the new ids, each
# a number within its queue.
_PUBLISH_ITEMS = r"""
local function publish_items(k0, a0)
  local _, now_ms = clock()
  local ids = {}
  for i = 1, (#KEYS - k0) / 4 do
    local k, a = k0 + (i - 1) * 4 + 1, a0 + (i - 1) * 4
    local id = redis.call('INCR', KEYS[k])
    -- Never reuse a number in use: a counter behind its queue (made by an older celeriac,
    -- or lost) skips ahead instead of overwriting a message or a dead letter.
    while redis.call('EXISTS', ARGV[a + 1] .. 'm:' .. id, ARGV[a + 1] .. 'dead:' .. id) > 0 do
      id = redis.call('INCR', KEYS[k])
    end
    local msg = ARGV[a + 1] .. 'm:' .. id
    redis.call('HSET', msg, 'body', ARGV[a + 2], 'priority', ARGV[a + 3], 'deliveries', 0)
    local due = ARGV[a + 4]
    if due ~= '' and tonumber(due) > now_ms then
      redis.call('ZADD', KEYS[k + 2], due, id)
    else
      redis.call('ZADD', KEYS[k + 1], score(ARGV[a + 3], id), id)
    end
    notify(KEYS[k + 3])
    ids[i] = id
  end
  return ids
end
"""

# KEYS and ARGV: as publish_items reads them, from the start.
PUBLISH = _PUBLISH_ITEMS + "return publish_items(0, 0)\n"

# KEYS: the once key, then PUBLISH's. ARGV: ttl ms ('0': none), the channel to publish the
# write on, then PUBLISH's. Returns false (the key exists: nothing published) or the new ids.
PUBLISH_ONCE = (
    _PUBLISH_ITEMS
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if ARGV[1] == '0' then
  redis.call('SET', KEYS[1], '1')
else
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
redis.call('PUBLISH', ARGV[2], '=1')
return publish_items(1, 2)
"""
)

# KEYS: per queue ready, delayed, leased, wake, dead. ARGV: limit, lease ms, max deliveries,
# token prefix, timer batch, then per queue: name, base.
# Returns {ms until the next timer (-1: none; 0 when something was leased), then per delivery:
# queue index, id, body, priority, deliveries, token}.
CLAIM = r"""
local limit, lease_ms, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local token_prefix, batch = ARGV[4], tonumber(ARGV[5])
local now, now_ms = clock()
local queues = {}
for q = 1, #KEYS / 5 do
  local k = (q - 1) * 5
  queues[q] = {ready = KEYS[k + 1], delayed = KEYS[k + 2], leased = KEYS[k + 3],
               wake = KEYS[k + 4], dead = KEYS[k + 5], name = ARGV[4 + q * 2],
               base = ARGV[5 + q * 2]}
end

local function promote(q)  -- due delayed messages become ready
  local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now_ms, 'LIMIT', 0, batch)
  for _, id in ipairs(due) do
    make_ready(q.ready, q.wake, q.base .. 'm:' .. id, id)
  end
  zrem_all(q.delayed, due)
end

local function reclaim(q)  -- expired leases: deliver again, or dead-letter at max deliveries
  local expired = redis.call('ZRANGEBYSCORE', q.leased, '-inf', now_ms, 'LIMIT', 0, batch)
  for _, id in ipairs(expired) do
    local msg = q.base .. 'm:' .. id
    local deliveries = tonumber(redis.call('HGET', msg, 'deliveries'))
    redis.call('HDEL', msg, 'lease')
    add_event(msg, {at = now, event = 'lease_expired', deliveries = deliveries})
    if deliveries >= max then
      bury(msg, id, q.name, 'lease_expired', now, q.dead, q.base .. 'dead:' .. id)
    else
      make_ready(q.ready, q.wake, msg, id)
    end
  end
  zrem_all(q.leased, expired)
end

local function candidates()  -- the most urgent ready ids over all queues
  local found = {}
  for qi, q in ipairs(queues) do
    local head = redis.call('ZRANGE', q.ready, 0, limit - 1, 'WITHSCORES')
    for j = 1, #head, 2 do
      found[#found + 1] = {score = tonumber(head[j + 1]), q = qi, id = head[j]}
    end
  end
  if #queues > 1 then table.sort(found, function(a, b) return a.score < b.score end) end
  return found
end

local function lease(q, id, out)
  local msg = q.base .. 'm:' .. id
  local fields = redis.call('HMGET', msg, 'body', 'priority')
  local deliveries = redis.call('HINCRBY', msg, 'deliveries', 1)
  local token = token_prefix .. id
  redis.call('HSET', msg, 'lease', token)
  redis.call('ZADD', q.leased, now_ms + lease_ms, id)
  for _, v in ipairs({id, fields[1], fields[2], deliveries, token}) do out[#out + 1] = v end
end

local function next_timer()
  local soonest = nil
  for _, q in ipairs(queues) do
    for _, key in ipairs({q.delayed, q.leased}) do
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if head[2] and (soonest == nil or tonumber(head[2]) < soonest) then
        soonest = tonumber(head[2])
      end
    end
  end
  if soonest == nil then return -1 end
  return math.max(0, math.ceil(soonest - now_ms))
end

for _, q in ipairs(queues) do promote(q); reclaim(q) end
local out, taken = {0}, {}
for i, c in ipairs(candidates()) do
  if i > limit then break end
  out[#out + 1] = c.q
  lease(queues[c.q], c.id, out)
  taken[c.q] = taken[c.q] or {}
  table.insert(taken[c.q], c.id)
end
for qi, q in ipairs(queues) do
  if taken[qi] then zrem_all(q.ready, taken[qi]) end
  if redis.call('EXISTS', q.ready) == 1 then
    notify(q.wake)  -- work is left: wake the next idle fetcher
  elseif redis.call('EXISTS', q.delayed) == 0 then
    redis.call('DEL', q.wake)  -- nothing to wake anyone for; keeps an idle Redis empty
  end
end
if #out == 1 then out[1] = next_timer() end
return out
"""

# KEYS per item: leased, message, result key. ARGV per item: id, token, write ('1'/'0'), value,
# ttl ms ('0': none), channel. Returns 1/0 per item.
COMPLETE = r"""
local out = {}
for i = 1, #KEYS / 3 do
  local leased, msg, key = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]
  local a = (i - 1) * 6
  out[i] = 0
  if held(msg, ARGV[a + 2]) then
    free_unique(msg)
    redis.call('DEL', msg)
    redis.call('ZREM', leased, ARGV[a + 1])
    if ARGV[a + 3] == '1' then
      if ARGV[a + 5] == '0' then
        redis.call('SET', key, ARGV[a + 4])
      else
        redis.call('SET', key, ARGV[a + 4], 'PX', ARGV[a + 5])
      end
      redis.call('PUBLISH', ARGV[a + 6], notice(ARGV[a + 4]))
    end
    out[i] = 1
  end
end
return out
"""

# KEYS per item: leased, message. ARGV: lease ms, then per item id, token. Returns 1/0 per item.
_EXTEND_HELD = r"""
local _, now_ms = clock()
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = 0
  if held(KEYS[i * 2], ARGV[i * 2 + 1]) then
    redis.call('ZADD', KEYS[i * 2 - 1], 'XX', now_ms + tonumber(ARGV[1]), ARGV[i * 2])
    -- then
    out[i] = 1
  end
end
return out
"""
EXTEND = _EXTEND_HELD.replace("    -- then\n", "")

# KEYS, ARGV and reply: EXTEND's. Also frees each held message's unique key: on a cluster,
# ``complete`` holds the lease this way before it writes the results, and a task whose result
# can be seen may be queued again.
HOLD = _EXTEND_HELD.replace("    -- then\n", "    free_unique(KEYS[i * 2])\n")

# KEYS: leased, ready, wake, message, dead. ARGV: id, token, has reason ('1'/'0'), reason,
# max deliveries, queue, dead letter (its key), detail (JSON object text, '' for none).
RELEASE = r"""
local leased, ready, wake, msg, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[1]
if not held(msg, ARGV[2]) then return 0 end
local now = clock()
redis.call('ZREM', leased, id)
redis.call('HDEL', msg, 'lease')
if ARGV[3] == '0' then  -- handed back unstarted: this delivery does not count
  redis.call('HINCRBY', msg, 'deliveries', -1)
  make_ready(ready, wake, msg, id)
  return 1
end
local deliveries = tonumber(redis.call('HGET', msg, 'deliveries'))
add_event(msg, {at = now, event = 'released', reason = ARGV[4], deliveries = deliveries},
          ARGV[8])
if deliveries >= tonumber(ARGV[5]) then
  bury(msg, id, ARGV[6], ARGV[4], now, dead, ARGV[7])
else
  make_ready(ready, wake, msg, id)
end
return 1
"""

# KEYS: leased, ready, delayed, wake, message. ARGV: id, token, due ms ('' for now),
# has body ('1'/'0'), body.
RETRY = r"""
local leased, ready, delayed, wake, msg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, due = ARGV[1], ARGV[3]
if not held(msg, ARGV[2]) then return 0 end
local _, now_ms = clock()
redis.call('ZREM', leased, id)
redis.call('HDEL', msg, 'lease')
redis.call('HSET', msg, 'deliveries', 0)
if ARGV[4] == '1' then redis.call('HSET', msg, 'body', ARGV[5]) end
if due ~= '' and tonumber(due) > now_ms then
  redis.call('ZADD', delayed, due, id)
  notify(wake)  -- idle fetchers recompute how long to sleep
else
  make_ready(ready, wake, msg, id)
end
return 1
"""

# KEYS: leased, message, dead. ARGV: id, token, reason, queue, dead letter (its key), detail
# (JSON object text, '' for none).
DEAD_LETTER = r"""
local leased, msg, dead = KEYS[1], KEYS[2], KEYS[3]
if not held(msg, ARGV[2]) then return 0 end
local now = clock()
redis.call('ZREM', leased, ARGV[1])
local deliveries = tonumber(redis.call('HGET', msg, 'deliveries'))
add_event(msg, {at = now, event = 'dead_lettered', reason = ARGV[3], deliveries = deliveries},
          ARGV[6])
bury(msg, ARGV[1], ARGV[4], ARGV[3], now, dead, ARGV[5])
return 1
"""

# KEYS: dead, dead letter, ready, wake, message. ARGV: id.
REDRIVE = r"""
local dead, letter, ready, wake, msg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', letter) == 0 or redis.call('ZREM', dead, ARGV[1]) == 0 then return 0 end
local now = clock()
redis.call('HDEL', letter, 'queue', 'reason', 'dead_at')
redis.call('HSET', letter, 'deliveries', 0)
add_event(letter, {at = now, event = 'redriven'})
redis.call('RENAME', letter, msg)
make_ready(ready, wake, msg, ARGV[1])
return 1
"""

# KEYS: ready, delayed. ARGV: base, batch. Returns how many messages it deleted.
PURGE = r"""
local removed = 0
for _, key in ipairs(KEYS) do
  local ids = redis.call('ZRANGE', key, 0, tonumber(ARGV[2]) - 1)
  for _, id in ipairs(ids) do
    free_unique(ARGV[1] .. 'm:' .. id)
    redis.call('DEL', ARGV[1] .. 'm:' .. id)
  end
  zrem_all(key, ids)
  removed = removed + #ids
end
return removed
"""

# KEYS: dead (a queue's). ARGV: its letters' key prefix, batch. Returns how many it deleted.
PURGE_DEAD = r"""
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
zrem_all(KEYS[1], ids)
return #ids
"""

# KEYS: key. ARGV: amount, ttl ms ('0': keep the current one), channel.
INCR = r"""
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], '=' .. value)
return value
"""

# KEYS: key. ARGV: value, ttl ms ('0': none), channel.
PUT = r"""
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], notice(ARGV[1]))
return 1
"""

# KEYS: ready, delayed, leased. Returns how many messages the queue holds.
SIZE = r"""
return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
"""
