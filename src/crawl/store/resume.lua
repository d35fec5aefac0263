-- Resumes a paused crawl: its jobs run again, and the caller publishes its held jobs anew
-- (each stays held until its published copy begins: begin.lua). A crawl whose last pending
-- key finished while it was paused is done now. Answers the state afterwards, or 'unknown'.
local meta, counters, legacy, held = KEYS[1], KEYS[4], KEYS[3], KEYS[10]
local retention, now = tonumber(ARGV[1]), ARGV[2]
local state = redis.call('HGET', meta, 'state')
if not state then return 'unknown' end
if state == 'paused' then
  state = 'running'
  if pending_count(counters, legacy) == 0 and redis.call('HLEN', held) == 0 then
    state = 'done'
  end
  redis.call('HSET', meta, 'state', state, 'updated_at', now)
  if state == 'done' then expire_working(retention) end
end
return state
