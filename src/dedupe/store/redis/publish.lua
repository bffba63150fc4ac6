-- ARGV: now, owner, ttl ms, kind, status, headers, body, error, channel, key hex. Ends the
-- owner's lease with a result kept `ttl` (none for 0), and announces the key.
if not owned(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local now = now_ms()
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'kind', ARGV[4], 'at', int(now), 'until', int(now + ttl),
    'status', ARGV[5], 'headers', ARGV[6], 'body', ARGV[7], 'error', ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  index(ARGV[10], ttl)
end
redis.call('PUBLISH', ARGV[9], ARGV[10])
return 1
