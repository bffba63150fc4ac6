local now = now_ms()
-- Checked before the first write.
if not string.match(ARGV[2], '^%d+$') then
  return error('courteous rate-limit script: argument 2 out of range: ' .. tostring(ARGV[2]))
end
local bound = num(3, 0, MAX_MS)
local slack = num(5, 0, MAX_MS)
local live = 'i' .. ARGV[2]
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], live))
if not expiry then
  return 0
end
if ARGV[1] == '' then
  -- `TIME` rounded up to the next millisecond, as the layer rounds its clock: never before the
  -- response head arrived.
  now = now + SETTLE_ROUNDING_MS
end
-- Never before the decision (a clock that stepped back), which is its expiry less its bound.
local stamp = math.max(now, expiry - bound)
local settled = 's' .. ARGV[2]
local keep = math.min(tonumber(redis.call('HGET', KEYS[3], 'keep')) or 0, MAX_MS)
local ttl = math.min(stamp - now + keep, MAX_MS) + slack
local function restamp(key)
  redis.call('ZREM', key, live)
  redis.call('ZADD', key, stamp, settled)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
restamp(KEYS[1])
if ARGV[4] == 'b' then
  restamp(KEYS[2])
end
return 1
