-- Atomic publish of one chat message (see src/broker/redis/publisher.rs).
-- KEYS[1] room stream, KEYS[2] idempotency key, KEYS[3] live channel
-- (declared as a key so that a cluster routes all three to the room's slot).
-- ARGV[1] "1" when a cmid was given, ARGV[2] frame head up to the id,
-- ARGV[3] frame tail after prev, ARGV[4] the publisher's trace context
-- ("<traceparent>\n", or empty), sent before the live frame and never
-- stored. The node fills in its settings (history length and TTL, the
-- idempotency TTL, PUBLISH or SPUBLISH) and the message frame's separators
-- around id and prev (owned by protocol::message_frame) when it loads the
-- script; the placeholders are the words between at-signs below.
-- Returns {duplicate (0 or 1), id, prev}.
if ARGV[1] == '1' then
  local stored = redis.call('GET', KEYS[2])
  if stored then
    local id, prev = string.match(stored, '^(%S+) (%S+)$')
    return {1, id, prev}
  end
end
local prev = '0-0'
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  prev = newest[1][1]
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '@MAXLEN@', '*', 'p', prev, 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], '@HISTORY_TTL_MS@')
redis.call('@PUBLISH@', KEYS[3], ARGV[4] .. ARGV[2] .. id .. '@AFTER_ID@' .. prev .. '@AFTER_PREV@' .. ARGV[3])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[2], id .. ' ' .. prev, 'PX', '@IDEMPOTENCY_TTL_MS@')
end
return {0, id, prev}
