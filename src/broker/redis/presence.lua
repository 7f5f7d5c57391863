-- A room's presence (see broker/presence.rs for the model). Every key and
-- the channel share the room's hash tag.
-- KEYS[1] entries: sorted set, "<entry id> <user>" -> deadline (ms, Redis clock)
-- KEYS[2] entry count per user: hash
-- KEYS[3] members: sorted set, score 0, so ordered by name
-- KEYS[4] meta: hash, n = count (users + anonymous entries), v = version
-- KEYS[5] recent changes: a stream whose ids are "<version>-1", capped,
--         read by a node that missed some (its Pub/Sub connection dropped)
-- KEYS[6] the room's live channel
-- ARGV[1] the operation: join, refresh, leave, sweep, changes or members.
-- A change is published as "p<version> <+|-> <count> <user>" (user empty
-- for an anonymous entry). No step is O(members): sweeping takes at most
-- @SWEEP_BATCH@ expired entries per call.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function change(sign, user)
  local n = redis.call('HINCRBY', KEYS[4], 'n', sign == '+' and 1 or -1)
  if n < 0 then
    redis.call('HSET', KEYS[4], 'n', 0)
    n = 0
  end
  local v = redis.call('HINCRBY', KEYS[4], 'v', 1)
  local payload = 'p' .. v .. ' ' .. sign .. ' ' .. n .. ' ' .. user
  redis.call('@PUBLISH@', KEYS[6], payload)
  -- pcall: after its keys expired the version restarts below the log's
  -- last id; the log is then only behind, never a reason to fail.
  redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', @LOG_MAXLEN@, v .. '-1', 'c', payload)
end

local function user_of(member)
  local space = string.find(member, ' ', 1, true)
  if not space then
    return ''
  end
  return string.sub(member, space + 1)
end

local function add(member, deadline)
  if redis.call('ZADD', KEYS[1], deadline, member) == 0 then
    return
  end
  local user = user_of(member)
  if user == '' then
    change('+', '')
  elseif redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
    redis.call('ZADD', KEYS[3], 0, user)
    change('+', user)
  end
end

local function remove(member)
  if redis.call('ZREM', KEYS[1], member) == 0 then
    return
  end
  local user = user_of(member)
  if user == '' then
    change('-', '')
  elseif redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    redis.call('HDEL', KEYS[2], user)
    redis.call('ZREM', KEYS[3], user)
    change('-', user)
  end
end

local function sweep()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, @SWEEP_BATCH@)
  for _, member in ipairs(expired) do
    remove(member)
  end
end

-- The keys outlive every entry; they go when no node refreshed them for
-- four entry lifetimes (the room's version then restarts).
local function keep(lifetime)
  for i = 1, 5 do
    redis.call('PEXPIRE', KEYS[i], lifetime * 4)
  end
end

local function state(after, limit)
  local meta = redis.call('HMGET', KEYS[4], 'n', 'v')
  local members
  if after == '' then
    members = redis.call('ZRANGE', KEYS[3], 0, limit - 1)
  else
    members = redis.call('ZRANGEBYLEX', KEYS[3], '(' .. after, '+', 'LIMIT', 0, limit)
  end
  return { tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), members }
end

local op = ARGV[1]
if op == 'join' then
  -- ARGV: lifetime ms, members to list, entry
  sweep()
  add(ARGV[4], now + tonumber(ARGV[2]))
  keep(tonumber(ARGV[2]))
  return state('', tonumber(ARGV[3]))
elseif op == 'refresh' then
  -- ARGV: lifetime ms, entries... (expired entries of other nodes go first)
  sweep()
  local deadline = now + tonumber(ARGV[2])
  for i = 3, #ARGV do
    add(ARGV[i], deadline)
  end
  keep(tonumber(ARGV[2]))
  return 0
elseif op == 'leave' then
  -- ARGV: entries...
  for i = 2, #ARGV do
    remove(ARGV[i])
  end
  return 0
elseif op == 'sweep' then
  sweep()
  return 0
elseif op == 'changes' then
  -- ARGV: after (a version): the current version and the logged changes
  -- after it, oldest first, at most @LOG_MAXLEN@.
  local current = tonumber(redis.call('HGET', KEYS[4], 'v') or '0')
  local entries = redis.call('XRANGE', KEYS[5], '(' .. ARGV[2] .. '-1', '+', 'COUNT', @LOG_MAXLEN@)
  local changes = {}
  for i, entry in ipairs(entries) do
    changes[i] = entry[2][2]
  end
  return { current, changes }
elseif op == 'members' then
  -- ARGV: after ('' for the first), limit
  sweep()
  return state(ARGV[2], tonumber(ARGV[3]))
end
return redis.error_reply('ERR unknown presence operation ' .. tostring(op))
