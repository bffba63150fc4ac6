local now = now_ms()
-- Every argument is checked before the first write.
local bound = -1
if ARGV[2] ~= '' then
  bound = math.max(num(2, 0, MAX_MS), 1)
end
local own_keep = num(4, 0, MAX_MS)
local state_ttl = num(5, 0, MAX_MS)
local monitoring = num(6, 0, MAX_MS)
local slack = num(7, 0, MAX_MS)
local paused_retry = num(8, 0, MAX_MS)
local count = num(9, 0, 100000)
for i = 0, count - 1 do
  local a = 10 + i * 5
  num(a, 0, MAX_MS)
  num(a + 1, 0, 4294967295)
  num(a + 2, 0, 4294967295)
  num(a + 3, 0, 4294967295)
end
local proposed = ARGV[10 + count * 5]
if proposed and not string.match(proposed, '^%d+$') then
  return error('courteous rate-limit script: argument ' .. (10 + count * 5) .. ' out of range: ' .. proposed)
end
-- Stored times are clamped too (a hash written by an older version may hold anything).
local function cap(t)
  return math.min(t, now + MAX_MS)
end
local state = redis.call('HMGET', KEYS[3], 'blocked_until', 'budget_remaining',
  'budget_observed', 'budget_reset', 'keep', 'keep_until')
-- The retention high-water mark: the longest window any caller counted in recently, so that
-- callers with shorter windows (a rolling deploy shortening a limit) do not trim admissions
-- that callers with the longer one still count. It lapses its own length after it was last
-- asked for.
local high, high_until = tonumber(state[5]) or 0, tonumber(state[6]) or 0
if own_keep >= high or high_until <= now then
  redis.call('HSET', KEYS[3], 'keep', own_keep, 'keep_until', now + own_keep)
  if redis.call('PTTL', KEYS[3]) < state_ttl then
    redis.call('PEXPIRE', KEYS[3], state_ttl)
  end
  high = own_keep
end
local blocked = cap(tonumber(state[1]) or 0)
if blocked > now then
  return {'refused', now, blocked, 'server_blocked'}
end
local remaining = -1
local keep = math.min(math.max(own_keep, high), MAX_MS)
local ttl = keep
local reset = tonumber(state[4])
if state[2] and state[3] and reset and reset > now then
  reset = cap(reset)
  local left, observed = tonumber(state[2]), tonumber(state[3])
  local used = redis.call('ZCOUNT', KEYS[1], '(' .. observed, '+inf')
  if used >= left then
    return {'refused', now, reset, 'server_budget'}
  end
  remaining = left - used - 1
  keep = math.min(math.max(keep, now - observed), MAX_MS)
  ttl = math.min(math.max(keep, reset - now), MAX_MS)
end
local user = ARGV[3] == 'u'
local refused_at, reason = nil, nil
for i = 0, count - 1 do
  local a = 10 + i * 5
  local window, max = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local since = math.max(now - window, 0)
  local total = redis.call('ZCOUNT', KEYS[1], '(' .. since, '+inf')
  local k
  if user then
    k = math.max(total - max + 1, 0)
  elseif ARGV[a + 4] == '1' then
    k = -1
  else
    local background = redis.call('ZCOUNT', KEYS[2], '(' .. since, '+inf')
    local unused = math.max(tonumber(ARGV[a + 2]) - math.max(total - background, 0), 0)
    k = math.max(background + 1 - tonumber(ARGV[a + 3]), total + unused + 1 - max, 0)
  end
  if k == 0 then
    if remaining < 0 or max - total - 1 < remaining then
      remaining = max - total - 1
    end
  else
    local at, why
    if k < 0 then
      at, why = now + paused_retry, 'background_paused'
    else
      local kth = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES',
        'LIMIT', k - 1, 1)
      local oldest = tonumber(kth[2]) or now
      if oldest > now + SETTLE_ROUNDING_MS then
        -- Stamped with its expiry: in flight. It settles no earlier than now, so its slot
        -- frees one window from now at the earliest.
        oldest, why = now, 'in_flight'
      elseif user or total >= max then
        why = 'limit'
      else
        why = 'background_share'
      end
      at = cap(math.max(oldest + window + 1, now + 1))
    end
    if not refused_at or at > refused_at then
      refused_at, reason = at, why
    end
  end
end
if refused_at then
  return {'refused', now, refused_at, reason}
end
-- The admission's identity: unique among the resource's admissions, whatever process made
-- them ('i' in flight, 's' stamped). The caller's proposal (random, so that it can settle the
-- admission should the reply be lost) unless it is taken; else a counter. The state hash that
-- counts them outlives the sets that hold them (below); should it have been lost all the same
-- (evicted), a taken identity is skipped.
local function free(id)
  return not redis.call('ZSCORE', KEYS[1], 'i' .. id) and not redis.call('ZSCORE', KEYS[1], 's' .. id)
end
local id, member = proposed, nil
if not id or not free(id) then
  repeat
    id = string.format('%d', redis.call('HINCRBY', KEYS[3], 'seq', 1))
  until free(id)
end
local stamp = now
member = 's' .. id
if bound >= 0 then
  -- In flight: stamped with its expiry, so that it counts in every window until it settles
  -- (or, never settled, from then on as if sent then), and kept until that stamp leaves the
  -- longest window.
  stamp, member = now + bound, 'i' .. id
  ttl = math.min(math.max(ttl, bound + keep), MAX_MS)
end
ttl = ttl + slack
local function record(key)
  redis.call('ZADD', key, stamp, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  -- Only ever extended: an in-flight admission may need the set longer than this one does.
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
record(KEYS[1])
if not user then
  record(KEYS[2])
end
redis.call('HSETNX', KEYS[3], 'first_at', now)
if user then
  local last = tonumber(redis.call('HGET', KEYS[3], 'last_user_at'))
  if not last or now > last then
    redis.call('HSET', KEYS[3], 'last_user_at', now)
  end
  local second = math.floor(now / 1000)
  if redis.call('HINCRBY', KEYS[4], second, 1) == 1 then
    redis.call('ZADD', KEYS[5], second, second)
    local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', math.floor((now - monitoring) / 1000) - 2,
      'LIMIT', 0, 100)
    if #old > 0 then
      redis.call('HDEL', KEYS[4], unpack(old))
      redis.call('ZREM', KEYS[5], unpack(old))
    end
  end
  redis.call('PEXPIRE', KEYS[4], monitoring + 1000 + slack)
  redis.call('PEXPIRE', KEYS[5], monitoring + 1000 + slack)
end
state_ttl = math.max(state_ttl, ttl)
if redis.call('PTTL', KEYS[3]) < state_ttl then
  redis.call('PEXPIRE', KEYS[3], state_ttl)
end
return {'admitted', now, remaining, tonumber(id), stamp}
