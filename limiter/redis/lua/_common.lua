-- Library prepended to every script by limiter/store.py (not a script on its own).
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

-- An integer as a decimal string: tostring() and string coercion use %.14g, which turns
-- 13-digit-plus millisecond times and large counters into exponent notation.
local function int(x)
  return string.format('%d', x)
end
