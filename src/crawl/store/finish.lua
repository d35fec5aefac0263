local meta, claims, pending, counters, nodes, edges, failures =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local key, depth, outcome, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
-- A job of an unknown (expired) crawl leaves no trace.
if redis.call('EXISTS', meta) == 0 then return 0 end
local claim = redis.call('HGET', claims, key)
local claimed_depth = claim and tonumber(string.match(claim, '^(%d+)|'))
if claim and not claimed_depth then
  return redis.error_reply('CORRUPT claim of ' .. key .. ' is ' .. claim)
end
-- A shorter path may have re-claimed the key meanwhile: its own job clears it.
if not claim or claimed_depth >= depth then
  redis.call('SREM', pending, key)
end
if outcome == 'node' then
  local node_key, label = ARGV[5], ARGV[6]
  if redis.call('HSETNX', nodes, node_key, label) == 1 then
    redis.call('HINCRBY', counters, 'nodes:' .. label, 1)
    redis.call('HINCRBY', counters, 'fetched', 1)
  end
  for i = 7, #ARGV do
    if redis.call('SADD', edges, ARGV[i]) == 1 then redis.call('HINCRBY', counters, 'edges', 1) end
  end
elseif outcome == 'failed' then
  local reason = ARGV[5]
  if redis.call('HSETNX', failures, key, reason) == 1 then
    redis.call('HINCRBY', counters, 'failed:' .. reason, 1)
  end
end
redis.call('HSET', meta, 'updated_at', now)
if redis.call('SCARD', pending) == 0 and redis.call('HGET', meta, 'state') == 'running' then
  redis.call('HSET', meta, 'state', 'done')
end
return 1
