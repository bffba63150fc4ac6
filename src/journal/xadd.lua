-- Appends a batch of journal rows to a capped stream, in one round trip.
-- KEYS[1]: the stream. ARGV[1]: its cap (XADD MAXLEN ~). Then, for each row: the number of
-- field and value strings that follow, and those strings.
-- Returns the number of rows added.
local stream, cap = KEYS[1], ARGV[1]
local i, added = 2, 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {'XADD', stream, 'MAXLEN', '~', cap, '*'}
  for j = 1, n do
    args[#args + 1] = ARGV[i + j]
  end
  redis.call(unpack(args))
  i = i + n + 1
  added = added + 1
end
return added
