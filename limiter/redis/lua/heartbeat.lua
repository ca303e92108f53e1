-- heartbeat: record that an instance is alive; re-register it if it had been evicted.
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash
-- ARGV: [1] channel, [2] instanceTimeout (ms), [3] instance id, [4] instance info (JSON object,
--       used only to re-register)
-- Evicts instances silent longer than the timeout (Redis time) first, this one included: an
-- instance paused past the timeout comes back as a new member. Publishes one allocation record
-- when membership changed.
-- Returns: {allocation record (JSON), Redis time (ms), 1 if the instance was re-registered / 0}
local _, now = redis_clock()
local reasons = {}
if evict(now, tonumber(ARGV[2])) > 0 then
  reasons[#reasons + 1] = 'evict'
end
local rejoined = 0
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', int(now), ARGV[3])
else
  redis.call('ZADD', KEYS[1], int(now), ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  rejoined = 1
  reasons[#reasons + 1] = 'rejoin'
end
return {current_allocation(now, reasons), now, rejoined}
