-- project_policy: store a new generation of the policy and republish the allocation.
-- KEYS: [1] instances zset, [2] instance-info hash, [3] allocation string, [4] policy hash,
--       [5] lease reports hash, [6] ghosts hash
-- ARGV: [1] channel, [2] instanceTimeout (ms, of the new spec), [3] generation (integer),
--       [4] spec (JSON, camelCase), [5] pool parameters (JSON list of
--       {"model": name, "pairs": [[p, q], ...], "limits": {limitName: capacity}} in policy order)
-- A generation lower than or equal to the stored one changes nothing (an operator replaying an
-- old event must not roll the fleet back). Otherwise writes spec, generation and parameters,
-- evicts silent instances, and publishes one allocation record with the next epoch.
-- Returns: {1 if applied / 0 if stale, allocation record (JSON) or false, Redis time (ms)}
local _, now = redis_clock()
local generation = tonumber(ARGV[3])
local stored = tonumber(redis.call('HGET', KEYS[4], 'generation'))
if stored and stored >= generation then
  return {0, redis.call('GET', KEYS[3]), now}
end
redis.call('HSET', KEYS[4], 'spec', ARGV[4], 'generation', int(generation), 'poolParams', ARGV[5])
local reason = 'policy'
if evict(now, tonumber(ARGV[2])) > 0 then
  reason = 'policy+evict'
end
expire_ghosts(now)
return {1, publish_allocation(now, reason), now}
