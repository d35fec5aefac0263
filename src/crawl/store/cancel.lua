local meta = KEYS[1]
local state = redis.call('HGET', meta, 'state')
if not state then return 0 end
if state == 'running' then
  redis.call('HSET', meta, 'state', 'cancelled', 'updated_at', ARGV[1])
end
return 1
