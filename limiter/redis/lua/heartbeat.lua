-- heartbeat: record that an instance is alive and what its clients hold; re-register it if it had
-- been evicted.
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash,
--       [5] lease reports hash, [6] ghosts hash
-- ARGV: [1] channel, [2] instanceTimeout (ms), [3] instance id, [4] instance info (JSON object,
--       used only to re-register), [5] incarnation, [6] lease report (JSON, "" when none is held)
-- Evicts instances silent longer than the timeout (Redis time) first, this one included: an
-- instance paused past the timeout comes back as a new member, and its own ghost (the leases it
-- held when it was evicted) is dropped, since it counts them itself again. Drops ghosts whose leases
-- have all timed out. Publishes one allocation record when anything changed, and when this instance
-- holds a different number of leases above its share than before (the record's "excess", while
-- the leases of a shrunk share end).
-- Returns: {allocation record (JSON), Redis time (ms), 1 if the instance was re-registered / 0}
local _, now = redis_clock()
local reasons = {}
if evict(now, tonumber(ARGV[2])) > 0 then
  reasons[#reasons + 1] = 'evict'
end
if expire_ghosts(now) > 0 then
  reasons[#reasons + 1] = 'expired'
end
local rejoined = 0
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', int(now), ARGV[3])
else
  redis.call('ZADD', KEYS[1], int(now), ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('HDEL', KEYS[6], ARGV[3] .. '#' .. ARGV[5])
  rejoined = 1
  reasons[#reasons + 1] = 'rejoin'
end
local before = redis.call('HGET', KEYS[5], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[6])
else
  redis.call('HDEL', KEYS[5], ARGV[3])
end
if #reasons == 0 and share_crossed(before, ARGV[6]) then
  reasons[#reasons + 1] = 'settle'
end
return {current_allocation(now, reasons), now, rejoined}
