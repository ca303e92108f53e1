-- credits_put: create or replace an API key's credit budget.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash (see
--       credits_lib.lua), [4] the policy's credit registry set
-- ARGV: [1] credits (the balance now, and the capacity refills top up to), [2] refill amount
--       (credits per period, 0 = no refill), [3] refill period (ms), [4] expiry (ms from now,
--       0 = never), [5] the key id (SHA-256 of the API key, for the registry)
-- Replacing keeps the lifetime totals and the open reservations: they still hold their credits,
-- so remaining becomes max(0, credits - reserved). The refill schedule restarts now.
-- Returns: {1 created / 0 replaced, then the state (see state_reply in credits_lib.lua)}
local _, now = redis_clock()
local s = load_budget()
local created = 0
if s then
  sweep(s, now)
else
  created = 1
  s = {}
  for _, field in ipairs(STATE_FIELDS) do
    s[field] = 0
  end
  s.createdMs = now
end
local credits = tonumber(ARGV[1])
s.capacity = credits
s.remaining = math.max(0, credits - s.reserved)
s.refillAmount = tonumber(ARGV[2])
s.refillEveryMs = tonumber(ARGV[3])
s.lastRefillMs = now
s.updatedMs = now
local expires_in = tonumber(ARGV[4])
s.expiresAtMs = 0
if expires_in > 0 then
  s.expiresAtMs = now + expires_in
end
local config = {}
for _, field in ipairs({'capacity', 'refillAmount', 'refillEveryMs', 'expiresAtMs', 'createdMs', 'updatedMs'}) do
  config[#config + 1] = field
  config[#config + 1] = int(s[field])
end
redis.call('HSET', KEYS[1], unpack(config))
save_budget(s)
for i = 1, 3 do
  if s.expiresAtMs > 0 then
    redis.call('PEXPIREAT', KEYS[i], int(s.expiresAtMs))
  else
    redis.call('PERSIST', KEYS[i])
  end
end
redis.call('SADD', KEYS[4], ARGV[5])
local out = state_reply(s, now)
table.insert(out, 1, created)
return out
