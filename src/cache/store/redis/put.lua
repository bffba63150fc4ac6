
-- put.lua
-- `KEYS`: urls, expiry, sizes, bytes, entry. `ARGV`: entry prefix, hex, url, encoded entry,
-- fresh_until ms, expires_at ms, size, channel, event, clean limit, TTL ms. Returns how many
-- expired members it cleaned.
local E, h, url = KEYS[5], ARGV[2], ARGV[3]
local old = redis.call('HGET', E, 'u')
if old then
  unindex(old .. '\0' .. h)
end
local m = url .. '\0' .. h
unindex(m)
redis.call('DEL', E)
redis.call('HSET', E, 'u', url, 'e', ARGV[4], 'f', ARGV[5], 'x', ARGV[6])
local now, ttl = now_ms(), tonumber(ARGV[11])
redis.call('PEXPIRE', E, ttl)
redis.call('ZADD', U, 0, m)
redis.call('ZADD', X, now + ttl, m)
redis.call('HSET', Z, m, ARGV[7])
redis.call('INCRBY', B, ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return purge(ARGV[1], now, tonumber(ARGV[10]))
