-- credits_settle: close a reservation with the actual cost: refund the rest, or charge the overage.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash,
--       [4] the idempotency key of this reservation's settlement
-- ARGV: [1] reservation id, [2] its deadline (ms, parsed from the id), [3] actual cost (credits,
--       integer >= 0), [4] how long the answer is remembered after the later of now and the
--       deadline (ms); a settle arriving later than deadline + that is refused
-- Overage (actual above the reservation) is charged from remaining but never takes it below 0: the
-- part that cannot be paid is counted in `overage`, not carried as debt. A settle that arrives
-- after the deadline (the credits went back already) charges min(actual, remaining) likewise.
-- Settling twice replays the first answer: a retry never charges twice.
-- Returns: {status, reserved, actual, charged, refunded, uncharged, remaining, late}
--   status 1 settled, 2 replay of the first answer (the caller checks `actual`), -1 no such key,
--          -2 unknown reservation (its deadline has not passed: it never existed), -3 too late
local seen = redis.call('GET', KEYS[4])
if seen then
  local out = {2}
  for v in string.gmatch(seen, '%d+') do
    out[#out + 1] = tonumber(v)
  end
  return out
end
local _, now = redis_clock()
local s = open_budget(now)
if not s then
  return {-1, 0, 0, 0, 0, 0, 0, 0}
end
local id, deadline, actual, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local held = tonumber(redis.call('HGET', KEYS[3], id))
local charged, refunded, uncharged, late
if held then
  charged, refunded, uncharged = close_reservation(s, id, held, actual)
  if deadline <= s.nextDeadlineMs then
    s.nextDeadlineMs = next_deadline()
  end
  late = 0
elseif now < deadline then
  save_budget(s)
  return {-2, 0, 0, 0, 0, 0, s.remaining, 0}
elseif now > deadline + keep then
  save_budget(s)
  return {-3, 0, 0, 0, 0, 0, s.remaining, 0}
else
  -- Expired already (its credits returned at the deadline): the work was still done, so charge it.
  held = 0
  charged = math.min(actual, s.remaining)
  refunded, uncharged, late = 0, actual - charged, 1
  s.remaining = s.remaining - charged
  s.consumed = s.consumed + charged
  s.overage = s.overage + uncharged
end
s.settled = s.settled + 1
save_budget(s)
local reply = {held, actual, charged, refunded, uncharged, s.remaining, late}
local parts = {}
for i, v in ipairs(reply) do
  parts[i] = int(v)
end
redis.call('SET', KEYS[4], table.concat(parts, ':'), 'PX', int(math.max(now, deadline) + keep - now))
table.insert(reply, 1, 1)
return reply
