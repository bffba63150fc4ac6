-- No ARGV: what the key holds now.
return read(now_ms())
