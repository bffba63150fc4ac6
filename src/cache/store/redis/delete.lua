
-- delete.lua
-- `KEYS`: urls, expiry, sizes, bytes, entry. `ARGV`: hex, channel, event. Returns 1 if an
-- entry was deleted.
local E = KEYS[5]
local url = redis.call('HGET', E, 'u')
if url then
  unindex(url .. '\0' .. ARGV[1])
end
local n = redis.call('DEL', E)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
