local meta, claims, legacy, counters, started, held =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[10]
local key, depth, job = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local state = redis.call('HGET', meta, 'state')
if not state then return {'unknown'} end
local claim = redis.call('HGET', claims, key)
local claimed_depth = claim and parse_claim(claim)
if state == 'cancelled' then
  -- A job of a cancelled crawl is skipped, once: a redelivery finds its key no longer
  -- pending. A legacy member (claim_value.lua) counts as pending whatever its claim reads.
  local skipped = redis.call('SREM', legacy, key) == 1
  if claimed_depth and settle_claim(claims, counters, key) then skipped = true end
  if skipped then redis.call('HINCRBY', counters, 'skipped', 1) end
  drain_legacy(claims, legacy, counters)
  return {'cancelled'}
end
if claim and not claimed_depth then
  return redis.error_reply('CORRUPT claim of ' .. key .. ' is ' .. claim)
end
adopt_legacy(claims, legacy, counters, key)
drain_legacy(claims, legacy, counters)
if not claim then
  -- A job nobody claimed (a replayed DLQ record, or the late job of a child whose failed
  -- parent released its claim): claim it for itself.
  set_claim(claims, counters, key, depth, 'replay', false, true)
  redis.call('HINCRBY', counters, 'enqueued', 1)
  if state == 'done' then
    redis.call('HSET', meta, 'state', 'running')
    state = 'running'
    keep_working()
  end
elseif claimed_depth < depth or not pending_claim(claims, key) then
  redis.call('HINCRBY', counters, 'duplicates', 1)
  return {'duplicate'}
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
