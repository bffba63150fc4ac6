-- Shared by every per-key script. KEYS: lease, meta, result, the URL's index. ARGV[1]: the
-- caller's clock (ms since the epoch), or '' to read the server's (`TIME`).
local function now_ms()
  if ARGV[1] ~= '' then
    return tonumber(ARGV[1])
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A number as the integer Redis expects (Lua would write a large one with an exponent). The
-- caller caps times and durations at i64::MAX / 4, so sums stay within 64 bits.
local function int(n)
  return string.format('%d', n)
end
-- What the key holds at `now`. A lease or result ends at its `until` (by the clock its writer
-- used) or when Redis expires its key, whichever comes first; writers of an older version
-- wrote no `until`, and their keys end by Redis's expiry alone.
local function read(now)
  local r = redis.call('HMGET', KEYS[3], 'kind', 'at', 'status', 'headers', 'body', 'error', 'until')
  local kept = tonumber(r[7])
  if r[1] and (not kept or kept > now) then
    local left = redis.call('PTTL', KEYS[3])
    if kept and kept - now < left then
      left = kept - now
    end
    return {'done', now, r[1], r[2] or now, left, r[3], r[4], r[5], r[6]}
  end
  local owner = redis.call('GET', KEYS[1])
  local meta = redis.call('HMGET', KEYS[2], 'owner', 'started', 'until')
  local held = tonumber(meta[3])
  if owner and (not held or held > now) then
    return {'pending', now, owner, meta[2] or now}
  end
  local was = owner or meta[1]
  if was then
    return {'expired', now, was, meta[2] or now}
  end
  return {'vacant', now}
end
local function index(hex, ms)
  redis.call('SADD', KEYS[4], hex)
  if redis.call('PTTL', KEYS[4]) < ms then
    redis.call('PEXPIRE', KEYS[4], int(ms))
  end
end
local function owned(owner)
  local current = redis.call('GET', KEYS[1])
  if current then
    return current == owner
  end
  return redis.call('HGET', KEYS[2], 'owner') == owner
end
