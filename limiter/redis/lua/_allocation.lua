-- Library prepended to the membership and projection scripts by limiter/store.py, after _common.lua.
-- They all take the same KEYS:
--   KEYS[1] instances      zset: instance id -> last heartbeat (ms, Redis TIME)
--   KEYS[2] instance-info  hash: instance id -> JSON the instance registered with
--   KEYS[3] allocation     string: the allocation record (JSON)
--   KEYS[4] policy         hash: spec (JSON), generation, poolParams (JSON)
-- and ARGV[1] = the pub/sub channel, ARGV[2] = instanceTimeout in ms.

-- The limits whose per-instance share (capacity / N) the record reports, in display order.
local SHARE_LIMITS = {'tokensPerMinute', 'requestsPerMinute', 'tokensPerDay', 'requestsPerDay',
                      'maxConcurrentRequests'}

-- Remove the instances whose last heartbeat is older than the timeout; returns how many.
local function evict(now, timeout_ms)
  local cutoff = '(' .. int(now - timeout_ms)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  if #dead == 0 then
    return 0
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  -- unpack() is bounded by Lua's C stack: delete the info fields in batches.
  for i = 1, #dead, 1000 do
    redis.call('HDEL', KEYS[2], unpack(dead, i, math.min(i + 999, #dead)))
  end
  return #dead
end

-- pools[m].totalSlots = min over (p, q) of floor(p / (q * N)) = floor(floor(p / q) / N),
-- taken in two steps so that q * N never has to fit in 2^53.
local function total_slots(pairs_, n)
  if #pairs_ == 0 then
    return 0
  end
  local best = nil
  for _, pq in ipairs(pairs_) do
    local slots = idiv(idiv(pq[1], pq[2]), n)
    if best == nil or slots < best then
      best = slots
    end
  end
  return best
end

-- The pools object, in the policy's model order. Written by hand rather than with cjson.encode,
-- which keeps only 14 significant digits and does not preserve key order.
local function pools_json(params_json, n)
  if not params_json or n == 0 then
    return '{}'
  end
  local parts = {}
  for _, m in ipairs(cjson.decode(params_json)) do
    local fields = {'"totalSlots":' .. int(total_slots(m.pairs, n))}
    for _, limit in ipairs(SHARE_LIMITS) do
      local capacity = m.limits[limit]
      if capacity then
        fields[#fields + 1] = '"' .. limit .. '":' .. string.format('%.17g', capacity / n)
      end
    end
    parts[#parts + 1] = cjson.encode(m.model) .. ':{' .. table.concat(fields, ',') .. '}'
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Recompute the allocation, store it with the next epoch and publish it once; returns the record.
local function publish_allocation(now, reason)
  local n = redis.call('ZCARD', KEYS[1])
  local old = redis.call('GET', KEYS[3])
  local epoch = 1
  if old then
    epoch = (tonumber(cjson.decode(old).epoch) or 0) + 1
  end
  local policy = redis.call('HMGET', KEYS[4], 'generation', 'poolParams')
  local generation = tonumber(policy[1]) or 0
  local record = '{"instanceCount":' .. int(n) .. ',"epoch":' .. int(epoch) .. ',"generation":' .. int(generation)
    .. ',"changedAtMs":' .. int(now) .. ',"reason":' .. cjson.encode(reason)
    .. ',"pools":' .. pools_json(policy[2], n) .. '}'
  redis.call('SET', KEYS[3], record)
  redis.call('PUBLISH', ARGV[1], record)
  return record
end

-- The stored record, or a fresh one (published) when something changed or none is stored yet
-- (e.g. after Redis lost its data).
local function current_allocation(now, reasons)
  if #reasons == 0 then
    local record = redis.call('GET', KEYS[3])
    if record then
      return record
    end
    reasons = {'resync'}
  end
  return publish_allocation(now, table.concat(reasons, '+'))
end
