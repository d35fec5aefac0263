local meta, pending, counters, held = KEYS[1], KEYS[3], KEYS[4], KEYS[10]
local retention, now = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', meta, 'state')
if not state then return 0 end
if state == 'running' or state == 'paused' then
  redis.call('HSET', meta, 'state', 'cancelled', 'updated_at', now)
  -- Held jobs of a paused crawl will never run: they are skipped, as their jobs would be
  -- when they began.
  local keys = redis.call('HKEYS', held)
  for _, key in ipairs(keys) do
    if redis.call('SREM', pending, key) == 1 then redis.call('HINCRBY', counters, 'skipped', 1) end
  end
  redis.call('DEL', held)
  expire_working(retention)
end
return 1
