-- register: add an instance to the fleet (or refresh it when it is already a member).
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash,
--       [5] lease reports hash, [6] ghosts hash
-- ARGV: [1] channel, [2] instanceTimeout (ms), [3] instance id, [4] instance info (JSON object)
-- Evicts instances silent longer than the timeout (Redis time) first, and drops ghosts whose
-- leases have all timed out. A register comes from a new process: a lease report left under this
-- id by an earlier process (restarted before it was evicted) becomes a ghost, since the new
-- process does not know those leases. Publishes one allocation record when anything changed.
-- Returns: {allocation record (JSON), Redis time (ms), 1 if the instance joined / 0 if it was a member}
local _, now = redis_clock()
local reasons = {}
if evict(now, tonumber(ARGV[2])) > 0 then
  reasons[#reasons + 1] = 'evict'
end
if expire_ghosts(now) > 0 then
  reasons[#reasons + 1] = 'expired'
end
if retire(ARGV[3], now) > 0 then
  reasons[#reasons + 1] = 'restart'
end
local joined = redis.call('ZADD', KEYS[1], int(now), ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if joined == 1 then
  reasons[#reasons + 1] = 'join'
end
return {current_allocation(now, reasons), now, joined}
