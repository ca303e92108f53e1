-- charge: add usage to the current window even beyond the limit (a job used more than it reserved).
-- KEYS: [1] budget registry set, [2..n+1] budget hashes {window, used}
-- ARGV: two per budget key i (ARGV[2i-1..2i]): window length (s), amount
-- An overdrawn window refuses every draw until it ends: the fleet pays the overage back.
-- Returns: {Redis time (ms), then per key i: window id, used after the charge, ms until the window ends}
local sec, now = redis_clock()
local out = {now}
for i = 1, #KEYS - 1 do
  local ws, amount = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local window = idiv(sec, ws)
  local stored = redis.call('HMGET', KEYS[i + 1], 'window', 'used')
  local used = 0
  if tonumber(stored[1]) == window then
    used = tonumber(stored[2]) or 0
  end
  used = math.min(used + amount, MAX_COUNTER)  -- saturates: never wraps, never lifts the limit
  redis.call('HSET', KEYS[i + 1], 'window', int(window), 'used', int(used))
  redis.call('PEXPIRE', KEYS[i + 1], int(2 * ws * 1000))
  redis.call('SADD', KEYS[1], KEYS[i + 1])
  local b = #out
  out[b + 1], out[b + 2], out[b + 3] = window, used, (window + 1) * ws * 1000 - now
end
return out
