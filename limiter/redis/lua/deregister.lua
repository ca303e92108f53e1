-- deregister: remove an instance from the fleet (graceful shutdown).
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash
-- ARGV: [1] channel, [2] instanceTimeout (ms), [3] instance id
-- Evicts instances silent longer than the timeout (Redis time) first; publishes one allocation
-- record when membership changed.
-- Returns: {allocation record (JSON), Redis time (ms), 1 if the instance was a member / 0}
local _, now = redis_clock()
local reasons = {}
if evict(now, tonumber(ARGV[2])) > 0 then
  reasons[#reasons + 1] = 'evict'
end
local left = redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
if left == 1 then
  reasons[#reasons + 1] = 'leave'
end
return {current_allocation(now, reasons), now, left}
