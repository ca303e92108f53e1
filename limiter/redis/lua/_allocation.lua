-- Library prepended to the membership and projection scripts by limiter/redis/plumbing.py, after
-- _common.lua.
-- They all take the same KEYS:
--   KEYS[1] instances      zset: instance id -> last heartbeat (ms, Redis TIME)
--   KEYS[2] instance-info  hash: instance id -> JSON the instance registered with
--   KEYS[3] allocation     string: the allocation record (JSON)
--   KEYS[4] policy         hash: spec (JSON), generation, poolParams (JSON)
--   KEYS[5] leases         hash: live instance id -> its last lease report (JSON, see below)
--   KEYS[6] ghosts         hash: id#incarnation -> the last lease report of an instance that left
-- and ARGV[1] = the pub/sub channel, ARGV[2] = instanceTimeout in ms.
--
-- A lease report (limiter/core/membership.py LeaseReport) is
--   {"incarnation": "...", "untilMs": <latest lease deadline, ms of Redis TIME>,
--    "models": {model: {"leases": n, "tokens": reserved, "requests": reserved}}}
-- An instance that leaves with leases in flight leaves its last report behind as a ghost, summed
-- into the record's "held" until untilMs or until the same process re-joins: its clients still
-- hold those leases, so the others must not take that capacity yet.

-- The limits whose per-instance share (capacity / N) the record reports, in display order.
local SHARE_LIMITS = {'tokensPerMinute', 'requestsPerMinute', 'tokensPerDay', 'requestsPerDay',
                      'maxConcurrentRequests'}

-- Keep a lease report (JSON) as the ghost of instance `id` when it still holds leases; returns 1
-- if a ghost was written.
local function haunt(id, report, now)
  if not report or report == '' then
    return 0
  end
  local doc = cjson.decode(report)
  if tonumber(doc.untilMs) <= now then
    return 0
  end
  redis.call('HSET', KEYS[6], id .. '#' .. tostring(doc.incarnation), report)
  return 1
end

-- The live instance `id` is gone (evicted, or replaced by a new process): its last lease report
-- becomes a ghost. Returns 1 if a ghost was written.
local function retire(id, now)
  local report = redis.call('HGET', KEYS[5], id)
  if not report then
    return 0
  end
  redis.call('HDEL', KEYS[5], id)
  return haunt(id, report, now)
end

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
  for _, id in ipairs(dead) do
    retire(id, now)
  end
  return #dead
end

-- Drop the ghosts whose leases have all timed out; returns how many.
local function expire_ghosts(now)
  if redis.call('HLEN', KEYS[6]) == 0 then
    return 0
  end
  local all = redis.call('HGETALL', KEYS[6])
  local gone = 0
  for i = 1, #all, 2 do
    if tonumber(cjson.decode(all[i + 1]).untilMs) <= now then
      redis.call('HDEL', KEYS[6], all[i])
      gone = gone + 1
    end
  end
  return gone
end

-- The record's "held" object: the ghosts' leases summed per model, models sorted by name.
local function held_json()
  local all = redis.call('HVALS', KEYS[6])
  if #all == 0 then
    return '{}'
  end
  local sums, names = {}, {}
  for _, report in ipairs(all) do
    for model, h in pairs(cjson.decode(report).models) do
      local s = sums[model]
      if not s then
        s = {0, 0, 0}
        sums[model] = s
        names[#names + 1] = model
      end
      s[1], s[2], s[3] = s[1] + h.leases, s[2] + h.tokens, s[3] + h.requests
    end
  end
  table.sort(names)
  local parts = {}
  for _, model in ipairs(names) do
    local s = sums[model]
    parts[#parts + 1] = cjson.encode(model) .. ':{"leases":' .. int(s[1]) .. ',"tokens":' .. int(s[2])
      .. ',"requests":' .. int(s[3]) .. '}'
  end
  return '{' .. table.concat(parts, ',') .. '}'
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
    .. ',"pools":' .. pools_json(policy[2], n) .. ',"held":' .. held_json() .. '}'
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
