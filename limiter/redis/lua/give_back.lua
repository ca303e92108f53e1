-- give_back: return unused budget to the window it was drawn from.
-- KEYS: [1..n] budget hashes {window, used}
-- ARGV: two per budget key i (ARGV[2i-1..2i]): window id the amount was drawn in, amount
-- Only the same window gets it back: once a window has ended, its budget is gone anyway.
-- `used` never goes below 0.
-- Returns: per key, the amount actually given back (0 when the window has ended)
local out = {}
for i = 1, #KEYS do
  local window, amount = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local stored = redis.call('HMGET', KEYS[i], 'window', 'used')
  local back = 0
  if tonumber(stored[1]) == window then
    local used = tonumber(stored[2]) or 0
    back = math.max(0, math.min(used, amount))
    redis.call('HSET', KEYS[i], 'used', int(used - back))
  end
  out[i] = back
end
return out
