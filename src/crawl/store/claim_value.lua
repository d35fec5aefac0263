-- The value of a claim (the claims hash: key -> value), shared by the scripts that read or
-- write claims. A claim reads `[+]depth|by[*]`:
-- - `+` (a prefix) marks the key pending: claimed, and its outcome not recorded yet. The
--   flag lives in the claim, not in a set of its own, because a set member costs ~70 bytes
--   a key in flight and the mark one byte; the counters' `pending` field counts the marked
--   claims, so "is anything pending" stays O(1). A prefix, because every other part of a
--   claim starts with a digit, while `by` (of a claim from before tags: a whole claimer
--   name, hence a key) may end in any character.
-- - `by` is the claiming job's tag (below), or `replay` or `released`.
-- - `*` (a suffix) marks the key's node as counted, so a crawl counts its distinct nodes
--   without a second per-key hash; a node reached through a redirect (its key is not the
--   job's) is remembered in the nodes hash instead.
-- Every change of the pending mark goes through set_claim/settle_claim/drop_claim, which move
-- the counter only when the mark actually changes: a redelivered job never counts twice.

-- A job's tag in its children's claims: the first 8 hex digits of the SHA-1 of its claimer
-- name (`depth|key`), so a claim costs about 10 bytes of value instead of a whole key. Two
-- claimers of one key sharing a tag (about one pair in four billion) costs at most a
-- duplicate job, which BEGIN's dedupe absorbs, or a released claim, which the child's
-- frontier record claims anew when it begins. A claim written before tags (its `by` the whole
-- claimer name) still matches its claimer, so a crawl running across an upgrade keeps its
-- claimers' rights.
local function claimer_tag(claimer)
  return string.sub(redis.sha1hex(claimer), 1, 8)
end
-- depth, by, counted, pending; nil when the value is not a claim.
local function parse_claim(value)
  local mark, depth, by, counted = string.match(value, '^(%+?)(%d+)|([^*]*)(%*?)$')
  if not depth then return nil end
  return tonumber(depth), by, counted == '*', mark == '+'
end
local function claim_value(depth, by, counted, pending)
  local value = depth .. '|' .. by
  if pending then value = '+' .. value end
  if counted then value = value .. '*' end
  return value
end
-- Whether the existing claim of `key` (if any) carries the counted mark: rewriting a claim
-- keeps it, so a key re-claimed by a shorter path is not counted twice.
local function counted_claim(claims, key)
  local value = redis.call('HGET', claims, key)
  if not value then return false end
  local _, _, counted = parse_claim(value)
  return counted == true
end
-- Whether the existing claim of `key` (if any) is pending.
local function pending_claim(claims, key)
  local value = redis.call('HGET', claims, key)
  if not value then return false end
  local _, _, _, pending = parse_claim(value)
  return pending == true
end
-- Writes `key`'s claim, moving the pending counter by the change of its mark only.
local function set_claim(claims, counters, key, depth, by, counted, pending)
  local was = pending_claim(claims, key)
  redis.call('HSET', claims, key, claim_value(depth, by, counted, pending))
  if pending and not was then
    redis.call('HINCRBY', counters, 'pending', 1)
  elseif was and not pending then
    redis.call('HINCRBY', counters, 'pending', -1)
  end
end
-- Clears `key`'s pending mark, keeping the rest of its claim; true if it was pending.
local function settle_claim(claims, counters, key)
  local value = redis.call('HGET', claims, key)
  if not value then return false end
  local depth, by, counted, pending = parse_claim(value)
  if not pending then return false end
  redis.call('HSET', claims, key, claim_value(depth, by, counted, false))
  redis.call('HINCRBY', counters, 'pending', -1)
  return true
end
-- Withdraws `key`'s claim (and its pending mark with it).
local function drop_claim(claims, counters, key)
  if pending_claim(claims, key) then redis.call('HINCRBY', counters, 'pending', -1) end
  redis.call('HDEL', claims, key)
end
-- How many claimed keys are pending: the marked claims, plus the members of a legacy set
-- (below) not adopted yet.
local function pending_count(counters, legacy)
  return tonumber(redis.call('HGET', counters, 'pending') or '0') + redis.call('SCARD', legacy)
end

-- A crawl that was running when this build was deployed keeps its pending keys in a set (the
-- `pending` key) and its claims without the mark. Its keys are adopted into the new layout
-- (mark the claim, count it, leave the set), each as soon as a script touches it
-- (adopt_legacy, before the key's pending flag is read) and the others a bounded batch per
-- script (drain_legacy), so no single script walks a million members; Redis deletes the
-- set with its last member. Until then a key is pending if its claim is marked or it is a
-- member, and the pending count is the sum (pending_count), so every check reads the same
-- answer it did before the upgrade. A member whose claim is missing or unreadable stays a
-- member (pending, as it was): the job that begins it claims it anew, or the crawl's state
-- was broken before.
local LEGACY_BATCH = 100
local function mark_legacy(claims, counters, key)
  local value = redis.call('HGET', claims, key)
  if not value then return false end
  local depth, by, counted, pending = parse_claim(value)
  if not depth then return false end
  if not pending then
    redis.call('HSET', claims, key, claim_value(depth, by, counted, true))
    redis.call('HINCRBY', counters, 'pending', 1)
  end
  return true
end
-- Adopts `key` if it is a legacy member: afterwards its pending flag is its claim's mark
-- alone (a member without a claim is no longer pending: its caller claims it anew or not).
-- A member whose claim is unreadable stays one, as drain_legacy leaves it.
local function adopt_legacy(claims, legacy, counters, key)
  local value = redis.call('HGET', claims, key)
  if value and not parse_claim(value) then return end
  if redis.call('SREM', legacy, key) == 1 then mark_legacy(claims, counters, key) end
end
local function drain_legacy(claims, legacy, counters)
  local members = redis.call('SPOP', legacy, LEGACY_BATCH)
  local kept = {}
  for _, key in ipairs(members) do
    if not mark_legacy(claims, counters, key) then kept[#kept + 1] = key end
  end
  if #kept > 0 then redis.call('SADD', legacy, unpack(kept)) end
end
