
-- invalidate.lua
-- `KEYS`: urls, expiry, sizes, bytes.
-- `ARGV`: entry prefix, lex min, lex max, offset, limit, mode (`p` prefix, `u` path, `a` all),
-- target, channel, event. Deletes the entries of one batch of index members in the range that
-- match; returns `{deleted, members read, members skipped}`.
local mode, t = ARGV[6], ARGV[7]
local function matches(url)
  if mode == 'a' then
    return true
  elseif mode == 'p' then
    return string.sub(url, 1, #t) == t
  end
  return url == t or string.sub(url, 1, #t + 1) == t .. '?'
end
local ms = redis.call('ZRANGEBYLEX', U, ARGV[2], ARGV[3], 'LIMIT', tonumber(ARGV[4]), tonumber(ARGV[5]))
local n, skipped = 0, 0
for _, m in ipairs(ms) do
  local url, h = split(m)
  if matches(url) then
    local e = ARGV[1] .. h
    if redis.call('HGET', e, 'u') == url then
      n = n + redis.call('DEL', e)
    end
    unindex(m)
  else
    skipped = skipped + 1
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[9])
return {n, #ms, skipped}
