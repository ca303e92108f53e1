-- Library prepended to every script by limiter/redis/plumbing.py (not a script on its own).
-- Time comes from Redis (TIME), never from the caller: one clock for the whole fleet.

-- Redis TIME as {whole seconds, ms since the epoch}.
local function redis_clock()
  local t = redis.call('TIME')
  local sec = tonumber(t[1])
  return sec, sec * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- floor(a / b) for non-negative integers a, b below 2^53, exactly: fmod of doubles is exact, so
-- a - fmod(a, b) is a multiple of b and the division leaves no rounding. (Lua numbers are doubles.)
local function idiv(a, b)
  return (a - math.fmod(a, b)) / b
end

-- The largest magnitude a counter may hold: integers are exact in Lua's doubles up to 2^53.
local MAX_COUNTER = 9007199254740991

-- An integer as a decimal string: tostring() and string coercion use %.14g, which turns
-- 13-digit-plus millisecond times and large counters into exponent notation. Values saturate at
-- +-MAX_COUNTER (and NaN is 0): '%d' of a larger double wraps to a negative number, which would
-- turn a spent budget into an unlimited one.
local function int(x)
  if x ~= x then
    x = 0
  elseif x > MAX_COUNTER then
    x = MAX_COUNTER
  elseif x < -MAX_COUNTER then
    x = -MAX_COUNTER
  end
  return string.format('%d', x)
end
