local now = now_ms()
local blocked = 0
if (tonumber(redis.call('HGET', KEYS[2], 'blocked_until')) or 0) > now then
  blocked = 1
end
-- In flight: stamped after now and a settlement's rounding (with their expiry).
return {redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[1], '(' .. (now + SETTLE_ROUNDING_MS), '+inf'), blocked}
