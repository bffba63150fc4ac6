local now = now_ms()
local windows = num(2, 0, 100000)
for i = 1, windows do
  num(2 + i, 0, MAX_MS)
end
local state = redis.call('HMGET', KEYS[3], 'blocked_until', 'budget_remaining',
  'budget_observed', 'budget_reset')
local function cap(t)
  if t then
    return math.min(t, now + MAX_MS)
  end
end
state[1] = cap(tonumber(state[1]))
state[4] = cap(tonumber(state[4]))
local used = -1
if state[3] then
  used = redis.call('ZCOUNT', KEYS[1], '(' .. state[3], '+inf')
end
-- In flight: stamped after now and a settlement's rounding (with their expiry).
local live = '(' .. (now + SETTLE_ROUNDING_MS)
local out = {{now, tonumber(state[1]) or 0, tonumber(state[2]) or -1, tonumber(state[3]) or -1,
  tonumber(state[4]) or -1, used, redis.call('ZCOUNT', KEYS[1], live, '+inf'),
  redis.call('ZCOUNT', KEYS[2], live, '+inf')}}
for i = 1, windows do
  local since = math.max(now - tonumber(ARGV[2 + i]), 0)
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. since, '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  out[#out + 1] = {redis.call('ZCOUNT', KEYS[1], '(' .. since, '+inf'),
    redis.call('ZCOUNT', KEYS[2], '(' .. since, '+inf'), tonumber(oldest[2]) or -1}
end
return out
