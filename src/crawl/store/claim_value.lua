-- The value of a claim (the claims hash: key -> value), shared by the scripts that read or
-- write claims. A claim reads `depth|by` or, once the key's node was counted, `depth|by*`:
-- `by` is the claiming job's tag (below), or `replay` or `released`. The mark lets a
-- crawl count its distinct nodes without a second per-key hash; a node reached through a
-- redirect (its key is not the job's) is remembered in the nodes hash instead.

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
-- depth, by, counted; nil when the value is not a claim.
local function parse_claim(value)
  local depth, by, mark = string.match(value, '^(%d+)|([^*]*)(%*?)$')
  if not depth then return nil end
  return tonumber(depth), by, mark == '*'
end
local function claim_value(depth, by, counted)
  if counted then return depth .. '|' .. by .. '*' end
  return depth .. '|' .. by
end
-- Whether the existing claim of `key` (if any) carries the counted mark: rewriting a claim
-- keeps it, so a key re-claimed by a shorter path is not counted twice.
local function counted_claim(claims, key)
  local value = redis.call('HGET', claims, key)
  if not value then return false end
  local _, _, counted = parse_claim(value)
  return counted == true
end
