local now = now_ms()
local state = redis.call('HMGET', KEYS[1], 'first_at', 'last_user_at')
local out = {now, state[1] and 1 or 0, tonumber(state[2]) or -1}
local from = math.floor((now - num(2, 0, MAX_MS)) / 1000)
local buckets = redis.call('HGETALL', KEYS[2])
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if second >= from then
    out[#out + 1] = second
    out[#out + 1] = tonumber(buckets[i + 1])
  end
end
return out
