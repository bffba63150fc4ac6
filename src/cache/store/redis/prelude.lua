-- Shared by every cache script, which is this prelude followed by the script's own text.
-- KEYS: urls, expiry, sizes, bytes (then the entry, if any).
local U, X, Z, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unindex(m)
  local s = redis.call('HGET', Z, m)
  if s then
    redis.call('HDEL', Z, m)
    redis.call('DECRBY', B, s)
  end
  redis.call('ZREM', U, m)
  redis.call('ZREM', X, m)
end
local function split(m)
  return string.sub(m, 1, -66), string.sub(m, -64)
end
-- Removes up to `limit` members whose entries expired (or were evicted); returns how many.
-- Scores are in Redis's clock: an entry that is still there (its expiry was moved) is scored
-- again by its TTL.
local function purge(eprefix, now, limit)
  local n = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', X, '-inf', now, 'LIMIT', 0, limit)) do
    local url, h = split(m)
    local e = eprefix .. h
    local cur = redis.call('HGET', e, 'u')
    local ttl = redis.call('PTTL', e)
    if cur == url and ttl > 0 then
      redis.call('ZADD', X, now + ttl, m)
    else
      if cur == url then
        redis.call('DEL', e)
      end
      unindex(m)
      n = n + 1
    end
  end
  return n
end
