-- ARGV: now (unused), owner, channel, key hex. Ends the owner's lease leaving nothing, and
-- announces the key.
if not owned(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
