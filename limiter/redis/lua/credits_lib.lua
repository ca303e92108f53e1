-- Library prepended to every credits_*.lua script by limiter/credits.py, after _common.lua (not a
-- script on its own). One API key's credit budget lives in three keys, always KEYS[1..3]:
--   KEYS[1] budget hash   remaining, capacity, reserved        credits (integers)
--                         refillAmount (credits, 0 = none), refillEveryMs, lastRefillMs
--                         expiresAtMs (0 = never), nextDeadlineMs (0 = no open reservation)
--                         createdMs, updatedMs                 ms of Redis TIME
--                         consumed, refilled, overage          lifetime totals, credits
--                         consumes, refused, reservations, settled, expired   lifetime counts
--   KEYS[2] deadlines     zset: open reservation id -> deadline (ms of Redis TIME)
--   KEYS[3] reserved      hash: open reservation id -> credits it holds
-- Invariants: remaining >= 0; reserved = the sum of KEYS[3]; a refill never lifts remaining +
-- reserved above capacity. Every script first returns the credits of reservations whose deadline
-- has passed (their holder died or forgot them), then applies the refills due, then does its work.

local STATE_FIELDS = {
  'remaining', 'capacity', 'reserved', 'refillAmount', 'refillEveryMs', 'lastRefillMs', 'expiresAtMs',
  'nextDeadlineMs', 'createdMs', 'updatedMs', 'consumed', 'refilled', 'overage', 'consumes', 'refused',
  'reservations', 'settled', 'expired',
}
-- What save() writes back: the configuration fields only change in credits_put.lua.
local MUTABLE_FIELDS = {
  'remaining', 'reserved', 'lastRefillMs', 'nextDeadlineMs', 'consumed', 'refilled', 'overage',
  'consumes', 'refused', 'reservations', 'settled', 'expired',
}

-- The budget as a table of numbers, or nil when the key does not exist (never created, deleted,
-- or expired: Redis expires the three keys together, see expire_with()).
local function load_budget()
  local raw = redis.call('HMGET', KEYS[1], unpack(STATE_FIELDS))
  if not raw[1] then
    return nil
  end
  local s = {}
  for i, field in ipairs(STATE_FIELDS) do
    s[field] = tonumber(raw[i]) or 0
  end
  return s
end

local function save_budget(s)
  local args = {}
  for _, field in ipairs(MUTABLE_FIELDS) do
    args[#args + 1] = field
    args[#args + 1] = int(s[field])
  end
  redis.call('HSET', KEYS[1], unpack(args))
end

-- Credits a finished reservation gives back land in remaining, but an admin who lowered capacity
-- meanwhile (PUT) gets the lower figure: remaining never rises above capacity - reserved by a return.
local function give_back(s, credits)
  local room = math.max(s.remaining, s.capacity - s.reserved)
  s.remaining = math.min(s.remaining + credits, room)
end

-- Close reservation `id` holding `held` credits, charging `charge` of them (charge may exceed held:
-- the overage is taken from remaining, never below 0; what cannot be taken is counted in overage).
-- Returns charged, refunded, uncharged.
local function close_reservation(s, id, held, charge)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  s.reserved = s.reserved - held
  local charged, refunded, uncharged = math.min(charge, held), 0, 0
  if charge < held then
    refunded = held - charge
    give_back(s, refunded)
  elseif charge > held then
    local extra = math.min(charge - held, s.remaining)
    s.remaining = s.remaining - extra
    charged = held + extra
    uncharged = charge - charged
  end
  s.consumed = s.consumed + charged
  s.overage = s.overage + uncharged
  return charged, refunded, uncharged
end

local function next_deadline()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return tonumber(first[2]) or 0
end

-- Return the credits of every reservation whose deadline is at or before now. Cheap when nothing is
-- due: nextDeadlineMs says whether to look at the zset at all.
local function sweep(s, now)
  if s.nextDeadlineMs == 0 or s.nextDeadlineMs > now then
    return
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(due) do
    local held = tonumber(redis.call('HGET', KEYS[3], id)) or 0
    redis.call('HDEL', KEYS[3], id)
    s.reserved = s.reserved - held
    give_back(s, held)
    s.expired = s.expired + 1
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  s.nextDeadlineMs = next_deadline()
end

-- Refills due since lastRefillMs: refillAmount per *full* period, the schedule kept (lastRefillMs
-- advances by whole periods, not to now). Capped: remaining + reserved never exceeds capacity, so
-- an idle key does not hoard more than its size. A clock that went back (failover) refills nothing.
local function refill(s, now)
  if s.refillAmount <= 0 or s.refillEveryMs <= 0 or now < s.lastRefillMs + s.refillEveryMs then
    return
  end
  local periods = idiv(now - s.lastRefillMs, s.refillEveryMs)
  -- periods * refillAmount may exceed 2^53 (and lose exactness) only when it is far above room.
  local room = math.max(0, s.capacity - s.remaining - s.reserved)
  local add = math.min(periods * s.refillAmount, room)
  s.remaining = s.remaining + add
  s.refilled = s.refilled + add
  s.lastRefillMs = s.lastRefillMs + periods * s.refillEveryMs
end

-- ms until the next refill, or -1 without refills.
local function next_refill_ms(s, now)
  if s.refillAmount <= 0 or s.refillEveryMs <= 0 then
    return -1
  end
  return math.max(0, s.lastRefillMs + s.refillEveryMs - now)
end

-- Load, sweep and refill: the first step of every script but put and delete. nil if no such key.
local function open_budget(now)
  local s = load_budget()
  if s then
    sweep(s, now)
    refill(s, now)
  end
  return s
end

-- Keys created after the budget (the reservation zset and hash) expire with it.
local function expire_with(s, key)
  if s.expiresAtMs > 0 then
    redis.call('PEXPIREAT', key, int(s.expiresAtMs))
  end
end

-- The budget as returned by get and put: the fields of STATE_FIELDS in order, then Redis time (ms),
-- ms to the next refill (-1 none), and how many reservations are open.
local function state_reply(s, now)
  local out = {}
  for i, field in ipairs(STATE_FIELDS) do
    out[i] = s[field]
  end
  out[#out + 1] = now
  out[#out + 1] = next_refill_ms(s, now)
  out[#out + 1] = redis.call('ZCARD', KEYS[2])
  return out
end
