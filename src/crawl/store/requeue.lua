local meta, claims, legacy, counters, failures = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7]
local key, depth, now = ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HGET', meta, 'state')
if not state then return 'unknown' end
if state == 'cancelled' then return 'cancelled' end
adopt_legacy(claims, legacy, counters, key)
drain_legacy(claims, legacy, counters)
if pending_claim(claims, key) or redis.call('SISMEMBER', legacy, key) == 1 then
  return 'pending'
end
local reason = redis.call('HGET', failures, key)
if reason then
  redis.call('HDEL', failures, key)
  if redis.call('HINCRBY', counters, 'failed:' .. reason, -1) <= 0 then
    redis.call('HDEL', counters, 'failed:' .. reason)
  end
end
set_claim(claims, counters, key, depth, 'replay', counted_claim(claims, key), true)
redis.call('HINCRBY', counters, 'enqueued', 1)
-- A paused crawl stays paused: the replayed job is held when it begins.
if state ~= 'paused' then state = 'running' end
redis.call('HSET', meta, 'state', state, 'updated_at', now)
keep_working()
return 'requeued'
