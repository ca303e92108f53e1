-- draw: take budget from the fleet's window counters of one model, all or nothing.
-- KEYS: [1] budget registry set, [2..n+1] budget hashes {window, used}, one per limited dimension,
--       [n+2] allocation record, [n+3] budget fence
-- ARGV: four per budget key i (ARGV[4i-3..4i]): window length (s), limit, need, want
--       (need <= want; amounts in the dimension's unit: tokens or requests), then the caller's
--       "since" (of the last allocation record it applied; 0: none yet) and the fence (ms)
-- Redis lost its data (the record is gone, or began again since the caller looked): the counters
-- are empty until every instance has charged back what it drew of the current windows, so the
-- first draw to see it sets the fence (PX, not extended) and, while the fence stands, every draw
-- takes nothing and answers 2, with the ms until the fence ends as each key's window end.
-- Windows are aligned to the epoch by Redis TIME: window id = floor(now_s / window_s), so 60 s
-- windows are UTC minutes and 86400 s windows UTC days. A hash whose window is older is empty.
-- If any key has less than `need` left in its current window, nothing is taken anywhere. Otherwise
-- each key grants min(want, left), adds it to `used` and expires two windows later.
-- Returns: {1 granted / 0 refused / 2 fenced, Redis time (ms), then per key i: window id, granted,
--          left after this draw, ms until the window ends}
local sec, now = redis_clock()
local n = #KEYS - 3
local record_key, fence_key = KEYS[n + 2], KEYS[n + 3]
local since, fence_ms = tonumber(ARGV[4 * n + 1]), tonumber(ARGV[4 * n + 2])
if since ~= 0 then
  local record = redis.call('GET', record_key)
  -- The record is ours (_allocation.lua writes ',"since":<int>'): read that field alone, never
  -- decode the whole record (its held sums grow with the fleet) on every draw.
  if not record or tonumber(string.match(record, ',"since":(%d+)')) ~= since then
    redis.call('SET', fence_key, '1', 'PX', int(fence_ms), 'NX')
  end
end
local fenced = redis.call('PTTL', fence_key)
if fenced > 0 then
  local out = {2, now}
  for i = 1, n do
    local ws = tonumber(ARGV[4 * i - 3])
    local b = #out
    out[b + 1], out[b + 2], out[b + 3], out[b + 4] = idiv(sec, ws), 0, 0, fenced
  end
  return out
end
local state = {}
local ok = 1
for i = 1, n do
  local b = 4 * (i - 1)
  local ws, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local window = idiv(sec, ws)
  local stored = redis.call('HMGET', KEYS[i + 1], 'window', 'used')
  local used = 0
  if tonumber(stored[1]) == window then
    used = tonumber(stored[2]) or 0
  end
  if limit - used < tonumber(ARGV[b + 3]) then
    ok = 0
  end
  state[i] = {ws, limit, window, used}
end
local out = {ok, now}
for i = 1, n do
  local ws, limit, window, used = unpack(state[i])
  local granted = 0
  if ok == 1 then
    granted = math.min(tonumber(ARGV[4 * i]), limit - used)
    used = used + granted
    redis.call('HSET', KEYS[i + 1], 'window', int(window), 'used', int(used))
    redis.call('PEXPIRE', KEYS[i + 1], int(2 * ws * 1000))
    redis.call('SADD', KEYS[1], KEYS[i + 1])
  end
  local b = #out
  out[b + 1], out[b + 2], out[b + 3], out[b + 4] = window, granted, limit - used, (window + 1) * ws * 1000 - now
end
return out
