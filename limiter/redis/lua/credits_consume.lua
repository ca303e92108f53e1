-- credits_consume: spend `cost` credits of an API key if it has them, all or nothing.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash,
--       [4] (optional) the idempotency key of this request id
-- ARGV: [1] cost (credits, integer > 0), [2] how long an allowed answer is remembered under KEYS[4]
--       (ms; only with KEYS[4])
-- With a request id, an allowed consume is remembered: a retry of the same id charges nothing and
-- gets the original answer back. A refused one is not remembered (it charged nothing), so a retry
-- may succeed once credits have come back.
-- Returns: {status, remaining, ms to the next refill (-1 none), cost}
--   status 1 allowed, 0 refused (not enough credits), -1 no such key,
--          2 replay: remaining and cost are the original answer's (the caller checks the cost)
local request = KEYS[4]
if request then
  local seen = redis.call('GET', request)
  if seen then
    local cost, remaining = string.match(seen, '^(%d+):(%d+)$')
    return {2, tonumber(remaining), -1, tonumber(cost)}
  end
end
local _, now = redis_clock()
local s = open_budget(now)
if not s then
  return {-1, 0, -1, 0}
end
local cost = tonumber(ARGV[1])
local status = 0
if s.remaining >= cost then
  status = 1
  s.remaining = s.remaining - cost
  s.consumed = s.consumed + cost
  s.consumes = s.consumes + 1
  if request then
    redis.call('SET', request, int(cost) .. ':' .. int(s.remaining), 'PX', ARGV[2])
  end
else
  s.refused = s.refused + 1
end
save_budget(s)
return {status, s.remaining, next_refill_ms(s, now), cost}
