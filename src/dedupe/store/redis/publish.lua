-- ARGV: owner, ttl ms, kind, status, headers, body, error, channel, key hex.
if not owned(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'kind', ARGV[3], 'at', now_ms(), 'status', ARGV[4],
    'headers', ARGV[5], 'body', ARGV[6], 'error', ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ttl)
  index(ARGV[9], ttl)
end
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
