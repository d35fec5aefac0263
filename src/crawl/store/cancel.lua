local meta = KEYS[1]
local retention, now = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', meta, 'state')
if not state then return 0 end
if state == 'running' then
  redis.call('HSET', meta, 'state', 'cancelled', 'updated_at', now)
  expire_working(retention)
end
return 1
