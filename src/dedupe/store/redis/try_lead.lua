-- ARGV: now, owner, lease ms, meta grace ms, key hex. Leads the key if it is vacant or its
-- lease ran out (a takeover), else returns what `read` found.
local now = now_ms()
local state = read(now)
if state[1] ~= 'vacant' and state[1] ~= 'expired' then
  return state
end
local lease, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
-- A result past its `until` that Redis has not expired yet goes with the new lead.
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'started', int(now), 'until', int(now + lease))
redis.call('PEXPIRE', KEYS[2], int(lease + grace))
index(ARGV[5], lease + grace)
if state[1] == 'expired' then
  return {'acquired', now, 1}
end
return {'acquired', now, 0}
