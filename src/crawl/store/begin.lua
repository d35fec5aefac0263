local meta, claims, pending, counters, started, held =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[10]
local key, depth, job = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local state = redis.call('HGET', meta, 'state')
if not state then return {'unknown'} end
if state == 'cancelled' then
  if redis.call('SREM', pending, key) == 1 then redis.call('HINCRBY', counters, 'skipped', 1) end
  return {'cancelled'}
end
local claim = redis.call('HGET', claims, key)
if not claim then
  -- A job nobody claimed (a replayed DLQ record, or the late job of a child whose failed
  -- parent released its claim): claim it for itself.
  redis.call('HSET', claims, key, depth .. '|replay')
  redis.call('SADD', pending, key)
  redis.call('HINCRBY', counters, 'enqueued', 1)
  if state == 'done' then
    redis.call('HSET', meta, 'state', 'running')
    state = 'running'
    keep_working()
  end
else
  local claimed_depth = parse_claim(claim)
  if not claimed_depth then
    return redis.error_reply('CORRUPT claim of ' .. key .. ' is ' .. claim)
  end
  if claimed_depth < depth or redis.call('SISMEMBER', pending, key) == 0 then
    redis.call('HINCRBY', counters, 'duplicates', 1)
    return {'duplicate'}
  end
end
-- The key's job at this depth has begun: a failed parent no longer releases its claim. A
-- held job counts as begun too: its job exists (in the held hash), and will run on resume.
redis.call('HSET', started, key, depth)
if state == 'paused' then
  -- Held whole, as `depth|job`; a shorter path's job of the key replaces a deeper one.
  redis.call('HSET', held, key, depth .. '|' .. job)
  return {'held'}
end
-- This run covers a held job of the key at this depth or deeper (published again on
-- resume): it is no longer held.
local holding = redis.call('HGET', held, key)
if holding then
  local held_depth = tonumber(string.match(holding, '^(%d+)|'))
  if not held_depth or held_depth >= depth then redis.call('HDEL', held, key) end
end
return {'run', redis.call('HGET', meta, 'max_depth'), redis.call('HGET', meta, 'max_nodes')}
