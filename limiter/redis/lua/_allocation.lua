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

-- The ghosts' leases summed per model: {model -> {leases, tokens, requests}}, and the models' names.
local function held_sums()
  local sums, names = {}, {}
  for _, report in ipairs(redis.call('HVALS', KEYS[6])) do
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
  return sums, names
end

-- The record's "held" object: the ghosts' leases summed per model, models sorted by name.
local function held_json(sums, names)
  if #names == 0 then
    return '{}'
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

-- Per enforced model with maxConcurrentRequests C: {share, remainder}, where share = floor(left / n)
-- is the most leases an instance may hold on it once membership has settled (left = C minus the
-- ghosts' leases) and remainder = left - n * share, the slots no instance owns.
local function concurrency_shares(params, n, sums)
  local shares = {}
  for _, m in ipairs(params) do
    local c = m.limits.maxConcurrentRequests
    if c and not m.shadow then
      local left = c - ((sums[m.model] or {0})[1])
      if left < 0 then
        left = 0
      end
      local share = idiv(left, n)
      shares[m.model] = {share, left - n * share}
    end
  end
  return shares
end

-- A lease report's leases above `shares` (see concurrency_shares), per model.
local function over_share(report, shares)
  local over = {}
  if not report or report == '' then
    return over
  end
  for model, h in pairs(cjson.decode(report).models) do
    local s = shares[model]
    if s and h.leases > s[1] then
      over[model] = h.leases - s[1]
    end
  end
  return over
end

-- The record's "excess" object: per model, how many leases the live instances hold above their
-- share (after a join or a ghost shrank the shares: leases in flight are never cancelled), less the
-- remainder nobody owns. Every instance keeps that many of its own share free until it is 0, so
-- the fleet never holds more than C at once while the over-share leases end. Models with none
-- are omitted. O(instances holding leases): computed only when a record is published.
local function excess_json(params_json, n, sums)
  if not params_json or n == 0 then
    return '{}'
  end
  local params = cjson.decode(params_json)
  local shares = concurrency_shares(params, n, sums)
  if next(shares) == nil then
    return '{}'
  end
  local totals = {}
  for _, report in ipairs(redis.call('HVALS', KEYS[5])) do
    for model, over in pairs(over_share(report, shares)) do
      totals[model] = (totals[model] or 0) + over
    end
  end
  local parts = {}
  for _, m in ipairs(params) do
    local s = shares[m.model]
    local excess = (totals[m.model] or 0) - (s and s[2] or 0)
    if s and excess > 0 then
      parts[#parts + 1] = cjson.encode(m.model) .. ':' .. int(excess)
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Whether an instance's new lease report changes how far it is above its share on some model
-- (its old report replaced by `new`): then the record's "excess" must be published again. Cheap
-- when nobody is above their share: no report is scanned.
local function share_crossed(old, new)
  if (not old or old == '') and (not new or new == '') then
    return false
  end
  local n = redis.call('ZCARD', KEYS[1])
  local params_json = redis.call('HGET', KEYS[4], 'poolParams')
  if not params_json or n == 0 then
    return false
  end
  local sums = held_sums()
  local shares = concurrency_shares(cjson.decode(params_json), n, sums)
  local before, after = over_share(old, shares), over_share(new, shares)
  for model, over in pairs(after) do
    if before[model] ~= over then
      return true
    end
  end
  for model, _ in pairs(before) do
    if not after[model] then
      return true
    end
  end
  return false
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
-- "since" is when this chain of records began (the first record after the policy's keys were
-- empty): it changes only when Redis has lost its data, which is how instances and the draw
-- script tell a data loss from a change.
local function publish_allocation(now, reason)
  local n = redis.call('ZCARD', KEYS[1])
  local old = redis.call('GET', KEYS[3])
  local epoch, since = 1, now
  if old then
    local doc = cjson.decode(old)
    epoch = (tonumber(doc.epoch) or 0) + 1
    since = tonumber(doc.since) or tonumber(doc.changedAtMs) or now
  end
  local policy = redis.call('HMGET', KEYS[4], 'generation', 'poolParams')
  local generation = tonumber(policy[1]) or 0
  local sums, names = held_sums()
  local record = '{"instanceCount":' .. int(n) .. ',"epoch":' .. int(epoch) .. ',"generation":' .. int(generation)
    .. ',"changedAtMs":' .. int(now) .. ',"since":' .. int(since) .. ',"reason":' .. cjson.encode(reason)
    .. ',"pools":' .. pools_json(policy[2], n) .. ',"held":' .. held_json(sums, names)
    .. ',"excess":' .. excess_json(policy[2], n, sums) .. '}'
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
