local meta, claims, legacy, counters, offspring = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_nodes, claimer = tonumber(ARGV[1]), ARGV[2]
local tag = claimer_tag(claimer)
local state = redis.call('HGET', meta, 'state')
-- Read everything that could be corrupt before writing anything, so a corrupt reply never
-- leaves half a claim behind.
for i = 3, #ARGV, 2 do
  local claim = redis.call('HGET', claims, ARGV[i])
  if claim and not parse_claim(claim) then
    return redis.error_reply('CORRUPT claim of ' .. ARGV[i] .. ' is ' .. claim)
  end
end
for i = 3, #ARGV, 2 do adopt_legacy(claims, legacy, counters, ARGV[i]) end
drain_legacy(claims, legacy, counters)
local held = redis.call('HGET', offspring, claimer)
local owned, order = {}, {}
if held then
  for child in string.gmatch(held, '[^\n]+') do
    if not owned[child] then owned[child] = true; order[#order + 1] = child end
  end
end
local out = {}
for i = 3, #ARGV, 2 do
  local key, depth = ARGV[i], tonumber(ARGV[i + 1])
  local claim = redis.call('HGET', claims, key)
  local claimed_depth, claimed_by, counted, pending
  if claim then claimed_depth, claimed_by, counted, pending = parse_claim(claim) end
  local enqueue = 0
  if state ~= 'running' and state ~= 'paused' then
    -- A paused crawl still claims the children of jobs that were running when it paused:
    -- their jobs are published and held, so resume loses none of them.
    enqueue = 0
  elseif not claim then
    if redis.call('HLEN', claims) < max_nodes then
      enqueue = 1
    else
      redis.call('HINCRBY', counters, 'skipped', 1)
    end
  else
    if claimed_depth > depth then
      enqueue = 1
    elseif claimed_depth == depth and (claimed_by == tag or claimed_by == claimer)
        and pending then
      enqueue = 1
    end
  end
  if enqueue == 1 then
    set_claim(claims, counters, key, depth, tag, counted, true)
    redis.call('HINCRBY', counters, 'enqueued', 1)
    if not owned[key] then owned[key] = true; order[#order + 1] = key end
  end
  out[#out + 1] = enqueue
end
if #order > 0 then redis.call('HSET', offspring, claimer, table.concat(order, '\n')) end
return out
