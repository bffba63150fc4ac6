-- ARGV: owner, lease ms, meta grace ms, key hex.
if not owned(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]))
index(ARGV[4], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
