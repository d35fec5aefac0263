-- Shared by the scripts that change a crawl's state. Every such script takes the crawl's keys
-- in one order: meta, claims, pending, counters, nodes, edges, failures, started, offspring,
-- held, edge-sketch. `pending` is the set a crawl from before the pending mark kept
-- (claim_value.lua): it stays in the order, and among the working keys, so such a crawl's
-- set expires and is deleted with the rest.
-- meta and counters are the crawl's summary and never expire; the rest is working state,
-- which only in-flight work needs: it expires CRAWL_RETENTION after the crawl is done or
-- cancelled, and is kept again (PERSIST) when a replay makes the crawl run again.
local function working_keys()
  return {KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]}
end
local function expire_working(seconds)
  for _, k in ipairs(working_keys()) do redis.call('EXPIRE', k, seconds) end
end
local function keep_working()
  for _, k in ipairs(working_keys()) do redis.call('PERSIST', k) end
end
