-- ARGV: owner, lease ms, meta grace ms, key hex.
local now = now_ms()
local state = read(now)
if state[1] ~= 'vacant' and state[1] ~= 'expired' then
  return state
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return read(now)
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'started', now)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]))
index(ARGV[4], tonumber(ARGV[2]) + tonumber(ARGV[3]))
if state[1] == 'expired' then
  return {'acquired', now, 1}
end
return {'acquired', now, 0}
