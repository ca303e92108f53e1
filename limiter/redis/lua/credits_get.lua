-- credits_get: an API key's credit budget, after returning expired reservations and due refills.
-- KEYS: [1] budget hash, [2] reservation deadlines zset, [3] reservation amounts hash
-- ARGV: none
-- Returns: {} when there is no such key, else the state (see state_reply in credits_lib.lua)
local _, now = redis_clock()
local s = open_budget(now)
if not s then
  return {}
end
save_budget(s)
return state_reply(s, now)
