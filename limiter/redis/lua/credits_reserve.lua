-- credits_reserve: set aside an estimate of credits for work whose cost is known only afterwards.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash,
--       [4] (optional) the idempotency key of this request id
-- ARGV: [1] amount (credits, integer > 0), [2] time to live (ms): at the deadline, now + ttl in
--       Redis time, the credits return by themselves unless settled (a dead holder loses nothing),
--       [3] random suffix of the reservation id (hex), [4] how long an allowed answer is
--       remembered under KEYS[4] (ms; only with KEYS[4])
-- Refused, with nothing held, if the amount does not fit in remaining. The reservation id is
-- "<deadline ms>-<suffix>": settle can tell a reservation that expired from one that never was.
-- Returns: {status, remaining, ms to the next refill (-1 none), amount, reservation id, deadline}
--   status 1 reserved, 0 refused, -1 no such key, 2 replay of the original answer
local request = KEYS[4]
if request then
  local seen = redis.call('GET', request)
  if seen then
    local amount, remaining, id, deadline = string.match(seen, '^(%d+):(%d+):([%w-]+):(%d+)$')
    return {2, tonumber(remaining), -1, tonumber(amount), id, tonumber(deadline)}
  end
end
local _, now = redis_clock()
local s = open_budget(now)
if not s then
  return {-1, 0, -1, 0, '', 0}
end
local amount = tonumber(ARGV[1])
if s.remaining < amount then
  s.refused = s.refused + 1
  save_budget(s)
  return {0, s.remaining, next_refill_ms(s, now), amount, '', 0}
end
local deadline = now + tonumber(ARGV[2])
local id = int(deadline) .. '-' .. ARGV[3]
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('HSET', KEYS[3], id, int(amount))
expire_with(s, KEYS[2])
expire_with(s, KEYS[3])
s.remaining = s.remaining - amount
s.reserved = s.reserved + amount
s.reservations = s.reservations + 1
if s.nextDeadlineMs == 0 or deadline < s.nextDeadlineMs then
  s.nextDeadlineMs = deadline
end
save_budget(s)
if request then
  local answer = table.concat({int(amount), int(s.remaining), id, int(deadline)}, ':')
  redis.call('SET', request, answer, 'PX', ARGV[4])
end
return {1, s.remaining, next_refill_ms(s, now), amount, id, deadline}
