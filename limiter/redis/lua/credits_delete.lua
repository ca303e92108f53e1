-- credits_delete: forget an API key's credit budget and its open reservations.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash, [4] the
--       policy's credit registry set
-- ARGV: [1] the key id (SHA-256 of the API key)
-- Idempotency answers (…:req:<id>) are not deleted: they only replay answers and expire on their own.
-- Returns: 1 if the budget existed, else 0
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return existed
