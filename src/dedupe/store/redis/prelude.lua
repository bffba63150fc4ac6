-- Shared by every script: KEYS are lease, meta, result, and the URL's index.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function read(now)
  local r = redis.call('HMGET', KEYS[3], 'kind', 'at', 'status', 'headers', 'body', 'error')
  if r[1] then
    return {'done', now, r[1], r[2], redis.call('PTTL', KEYS[3]), r[3], r[4], r[5], r[6]}
  end
  local owner = redis.call('GET', KEYS[1])
  local started = redis.call('HGET', KEYS[2], 'started')
  if owner then
    return {'pending', now, owner, started or now, redis.call('PTTL', KEYS[1])}
  end
  local was = redis.call('HGET', KEYS[2], 'owner')
  if was then
    return {'expired', now, was, started or now}
  end
  return {'vacant', now}
end
local function index(hex, ms)
  redis.call('SADD', KEYS[4], hex)
  if redis.call('PTTL', KEYS[4]) < ms then
    redis.call('PEXPIRE', KEYS[4], ms)
  end
end
local function owned(owner)
  local current = redis.call('GET', KEYS[1])
  if current then
    return current == owner
  end
  return redis.call('HGET', KEYS[2], 'owner') == owner
end
