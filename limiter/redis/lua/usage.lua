-- usage: read the current windows of some budget keys (read only; for debug and metrics).
-- KEYS: [1..n] budget hashes {window, used}
-- ARGV: one per budget key i: window length (s)
-- Returns: {Redis time (ms), then per key i: window id, used in it, ms until the window ends}
local sec, now = redis_clock()
local out = {now}
for i = 1, #KEYS do
  local ws = tonumber(ARGV[i])
  local window = idiv(sec, ws)
  local stored = redis.call('HMGET', KEYS[i], 'window', 'used')
  local used = 0
  if tonumber(stored[1]) == window then
    used = tonumber(stored[2]) or 0
  end
  local b = #out
  out[b + 1], out[b + 2], out[b + 3] = window, used, (window + 1) * ws * 1000 - now
end
return out
