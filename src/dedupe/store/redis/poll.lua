-- ARGV: now. What the key holds.
return read(now_ms())
