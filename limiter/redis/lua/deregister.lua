-- deregister: remove an instance from the fleet (graceful shutdown), leaving what its clients
-- still hold as its ghost. Called again while the leases end, and once more when the last one has.
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash,
--       [5] lease reports hash, [6] ghosts hash
-- ARGV: [1] channel, [2] instanceTimeout (ms), [3] instance id, [4] incarnation,
--       [5] lease report (JSON, "" when none is held)
-- Evicts instances silent longer than the timeout (Redis time) first and drops ghosts whose leases
-- have all timed out; publishes one allocation record when anything changed.
-- Returns: {allocation record (JSON), Redis time (ms), 1 if the instance was a member / 0}
local _, now = redis_clock()
local reasons = {}
if evict(now, tonumber(ARGV[2])) > 0 then
  reasons[#reasons + 1] = 'evict'
end
if expire_ghosts(now) > 0 then
  reasons[#reasons + 1] = 'expired'
end
local left = redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[5], ARGV[3])
if left == 1 then
  reasons[#reasons + 1] = 'leave'
end
local ghost = ARGV[3] .. '#' .. ARGV[4]
local before = redis.call('HGET', KEYS[6], ghost)
redis.call('HDEL', KEYS[6], ghost)
haunt(ARGV[3], ARGV[5], now)
if before ~= redis.call('HGET', KEYS[6], ghost) then
  reasons[#reasons + 1] = 'held'
end
return {current_allocation(now, reasons), now, left}
