local MAX_MS = 315360000000
-- A settled admission may be stamped this far ahead of the clock (a settlement's time is rounded
-- up to the next millisecond); a stamp further ahead is an in-flight admission's expiry.
local SETTLE_ROUNDING_MS = 1
-- ARGV[i] as a number in [low, high]; else the script fails before it writes anything (Redis
-- does not roll a script back).
local function num(i, low, high)
  local n = tonumber(ARGV[i])
  if not n or n ~= n or n < low or n > high then
    return error('courteous rate-limit script: argument ' .. i .. ' out of range: ' .. tostring(ARGV[i]))
  end
  return n
end
local function now_ms()
  if ARGV[1] ~= '' then
    return num(1, 0, 1e15)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
