local meta, claims, legacy, counters, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[10]
local retention, now = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', meta, 'state')
if not state then return 0 end
if state == 'running' or state == 'paused' then
  redis.call('HSET', meta, 'state', 'cancelled', 'updated_at', now)
  -- Held jobs of a paused crawl will never run: they are skipped, as their jobs would be
  -- when they began (begin.lua: a legacy member counts as pending whatever its claim reads).
  local keys = redis.call('HKEYS', held)
  for _, key in ipairs(keys) do
    local skipped = redis.call('SREM', legacy, key) == 1
    if settle_claim(claims, counters, key) then skipped = true end
    if skipped then redis.call('HINCRBY', counters, 'skipped', 1) end
  end
  redis.call('DEL', held)
  drain_legacy(claims, legacy, counters)
  expire_working(retention)
end
return 1
