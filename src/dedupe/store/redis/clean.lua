-- KEYS: meta, lease, meta, lease, ...: deletes each meta hash whose lease is gone.
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 and redis.call('DEL', KEYS[i]) == 1 then
    n = n + 1
  end
end
return n
