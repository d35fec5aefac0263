// One tombstone per Open Library key that answered /type/delete or /type/redirect (a gone
// node message of `bookworm follow`'s freshness jobs): `revision` (the highest seen),
// `redirect` (the merge target, absent for a delete), `last_modified`, `updated_at`. Every
// record and edge row of a key at or below its tombstone's revision is refused, so a replay
// never brings a deleted record back. The constraint is also the index those checks look the
// key up in, and it makes concurrent MERGEs of one tombstone from several writers create one.
CREATE CONSTRAINT tombstone_key IF NOT EXISTS FOR (t:Tombstone) REQUIRE t.key IS UNIQUE;
