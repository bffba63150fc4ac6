-- KEYS: a URL's index. ARGV: the dedupe key prefix (`p:dedupe:`), channel. Deletes the lease,
-- meta and result of every key in the index, announces each (its waiters re-read it and find
-- it vacant), and deletes the index.
local n = 0
for _, hex in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local base = ARGV[1] .. '{' .. hex .. '}:'
  if redis.call('DEL', base .. 'lease', base .. 'meta', base .. 'result') > 0 then
    n = n + 1
  end
  redis.call('PUBLISH', ARGV[2], hex)
end
redis.call('DEL', KEYS[1])
return n
