local meta, claims, legacy, counters, nodes, edges, failures, started, offspring, sketch =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[11]
local retention, exact_edges = tonumber(ARGV[1]), tonumber(ARGV[2])
local key, depth, outcome, now = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
-- A job of an unknown crawl, or a late one of a finished crawl whose working state has
-- expired, leaves no trace: counting it again would count its node twice.
local state = redis.call('HGET', meta, 'state')
if not state then return 0 end
if (state == 'done' or state == 'cancelled') and redis.call('EXISTS', claims) == 0 then
  return 0
end
local claim = redis.call('HGET', claims, key)
local claimed_depth = claim and parse_claim(claim)
if claim and not claimed_depth then
  return redis.error_reply('CORRUPT claim of ' .. key .. ' is ' .. claim)
end
adopt_legacy(claims, legacy, counters, key)
drain_legacy(claims, legacy, counters)
-- A shorter path may have re-claimed the key meanwhile: its own job clears it.
if claim and claimed_depth >= depth then settle_claim(claims, counters, key) end
if redis.call('HGET', started, key) == tostring(depth) then redis.call('HDEL', started, key) end
-- The children this job claimed: once its outputs are acknowledged their jobs exist; once it
-- is dead-lettered those whose job never began are released (below), so none waits forever
-- for a job that was never published.
local claimer = depth .. '|' .. key
local held = redis.call('HGET', offspring, claimer)
redis.call('HDEL', offspring, claimer)
if outcome == 'node' then
  local node_key, label = ARGV[7], ARGV[8]
  -- A distinct node is counted once: its own key's claim carries the mark, a node reached
  -- through a redirect is remembered in the nodes hash, and each path checks the other.
  local count = false
  local node_claim = redis.call('HGET', claims, node_key)
  if node_key == key and node_claim then
    local claim_depth, by, counted, pending = parse_claim(node_claim)
    if not counted then
      redis.call('HSET', claims, key, claim_value(claim_depth, by, true, pending))
      count = redis.call('HEXISTS', nodes, key) == 0
    end
  elseif not counted_claim(claims, node_key) then
    count = redis.call('HSETNX', nodes, node_key, label) == 1
  end
  if count then
    redis.call('HINCRBY', counters, 'nodes:' .. label, 1)
    redis.call('HINCRBY', counters, 'fetched', 1)
  end
  -- Distinct edges (both ends of an edge publish it): counted exactly in a set while the
  -- crawl has at most exact_edges of them, then estimated by a HyperLogLog of fixed size,
  -- so a crawl's edge count costs bounded memory however many edges it finds.
  if #ARGV >= 9 then
    redis.call('PFADD', sketch, unpack(ARGV, 9, #ARGV))
    if redis.call('HGET', counters, 'edges_estimated') then
      local estimate = redis.call('PFCOUNT', sketch)
      if estimate > tonumber(redis.call('HGET', counters, 'edges') or '0') then
        redis.call('HSET', counters, 'edges', estimate)
      end
    else
      for i = 9, #ARGV do
        if redis.call('SADD', edges, ARGV[i]) == 1 then redis.call('HINCRBY', counters, 'edges', 1) end
      end
      if redis.call('SCARD', edges) > exact_edges then
        redis.call('DEL', edges)
        redis.call('HSET', counters, 'edges_estimated', 1)
      end
    end
  end
elseif outcome == 'failed' then
  local reason = ARGV[7]
  if redis.call('HSETNX', failures, key, reason) == 1 then
    redis.call('HINCRBY', counters, 'failed:' .. reason, 1)
  end
  -- Release each child still claimed by this job, still pending, and whose job at the
  -- claimed depth never began (its frontier record may never have been published). If a
  -- deeper job of the key is running, the claim goes back to that depth so that job's own
  -- finish clears it; otherwise the claim is withdrawn, and a job of the child that was
  -- published after all claims it anew when it begins.
  local tag = claimer_tag(claimer)
  for child in string.gmatch(held or '', '[^\n]+') do
    adopt_legacy(claims, legacy, counters, child)
    local child_claim = redis.call('HGET', claims, child)
    local child_depth, by, counted, pending = nil, nil, false, false
    if child_claim then child_depth, by, counted, pending = parse_claim(child_claim) end
    if (by == tag or by == claimer) and pending then
      local began = tonumber(redis.call('HGET', started, child))
      if not began then
        -- A withdrawn claim's mark moves to the nodes hash: the node stays counted.
        if counted then redis.call('HSETNX', nodes, child, 'counted') end
        drop_claim(claims, counters, child)
        redis.call('HINCRBY', counters, 'enqueued', -1)
      elseif began > child_depth then
        -- Still pending: the running job's finish settles it.
        redis.call('HSET', claims, child, claim_value(began, 'released', counted, true))
        redis.call('HINCRBY', counters, 'enqueued', -1)
      end
    end
  end
end
redis.call('HSET', meta, 'updated_at', now)
if pending_count(counters, legacy) == 0 and state == 'running' then
  redis.call('HSET', meta, 'state', 'done')
  state = 'done'
end
-- Done or cancelled: the working state (including what this call wrote) expires after the
-- retention, counted from the crawl's last outcome. A paused crawl is never done here (its
-- held keys are pending); resume declares it done if nothing is.
if state == 'done' or state == 'cancelled' then expire_working(retention) end
return 1
