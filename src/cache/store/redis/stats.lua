
-- stats.lua
-- `KEYS`: urls, expiry, sizes, bytes.
-- Returns `{indexed, expired, bytes}`.
return {redis.call('ZCARD', X), redis.call('ZCOUNT', X, '-inf', now_ms()),
  tonumber(redis.call('GET', B) or '0')}
