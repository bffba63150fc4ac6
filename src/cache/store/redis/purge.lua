
-- purge.lua
-- `KEYS`: urls, expiry, sizes, bytes.
-- `ARGV`: entry prefix, limit, scan cursor, scan count. Removes up to `limit` expired members,
-- then checks one `ZSCAN` step of the expiry index (from the cursor, about `scan count`
-- members, none if 0) for members whose entry is gone before its expiry (evicted by Redis's
-- `maxmemory` policy, or deleted by hand) and removes them. Returns `{cleaned, more, next
-- cursor, stale}`.
local limit = tonumber(ARGV[2])
local n = purge(ARGV[1], now_ms(), limit)
local cursor, stale = ARGV[3], 0
if tonumber(ARGV[4]) > 0 then
  local step = redis.call('ZSCAN', X, cursor, 'COUNT', ARGV[4])
  cursor = step[1]
  local found = step[2]
  for i = 1, #found, 2 do
    local m = found[i]
    local url, h = split(m)
    if redis.call('HGET', ARGV[1] .. h, 'u') ~= url then
      unindex(m)
      stale = stale + 1
    end
  end
end
local more = redis.call('ZCOUNT', X, '-inf', now_ms())
return {n, more, cursor, stale}
