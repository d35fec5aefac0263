-- Deletes a finished (done or cancelled) crawl's state at once: summary and working state.
-- A crawl with work ahead is refused (its state is answered); cancel it first.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'unknown' end
if state ~= 'done' and state ~= 'cancelled' then return state end
redis.call('DEL', unpack(KEYS))
return 'purged'
