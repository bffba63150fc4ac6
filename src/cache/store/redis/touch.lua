
-- touch.lua
-- `KEYS`: urls, expiry, sizes, bytes, entry. `ARGV`: hex, fresh_until ms, expires_at ms, TTL
-- ms.
local E = KEYS[5]
local url = redis.call('HGET', E, 'u')
if not url then
  return 0
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', E, 'f', ARGV[2], 'x', ARGV[3])
redis.call('ZADD', X, 'XX', now_ms() + ttl, url .. '\0' .. ARGV[1])
redis.call('PEXPIRE', E, ttl)
return 1
