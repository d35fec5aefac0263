-- Pauses a running crawl: from now on workers hold its jobs (begin.lua) instead of running
-- them. Answers the state the crawl is in afterwards, or 'unknown'.
local meta = KEYS[1]
local now = ARGV[1]
local state = redis.call('HGET', meta, 'state')
if not state then return 'unknown' end
if state == 'running' then
  redis.call('HSET', meta, 'state', 'paused', 'updated_at', now)
  return 'paused'
end
return state
