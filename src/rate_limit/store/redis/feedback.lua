local now = now_ms()
-- Checked before the first write.
local delay = num(3, -MAX_MS, MAX_MS)
num(4, 0, 4294967295)
local state_ttl = num(5, 0, MAX_MS)
if ARGV[2] == 'block' then
  local current = math.min(tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0,
    now + MAX_MS)
  if now + delay > current then
    redis.call('HSET', KEYS[1], 'blocked_until', now + delay)
  end
else
  -- The server's count includes the response's own request, whose settlement (just before,
  -- on `TIME` too) is stamped `TIME` rounded up: with `TIME`, the budget is observed no earlier
  -- than that (with the caller's clock, the layer's `now` already is).
  local observed = now
  if ARGV[1] == '' then
    observed = now + SETTLE_ROUNDING_MS
  end
  redis.call('HSET', KEYS[1], 'budget_remaining', ARGV[4], 'budget_observed', observed,
    'budget_reset', now + delay)
end
local ttl = math.max(delay, 0) + state_ttl
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return now
