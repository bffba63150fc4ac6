-- ARGV: now, owner, lease ms, meta grace ms, key hex. Extends the owner's lease from now.
if not owned(ARGV[2]) then
  return 0
end
local lease, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'until', int(now_ms() + lease))
redis.call('PEXPIRE', KEYS[2], int(lease + grace))
index(ARGV[5], lease + grace)
return 1
