// One node per Open Library key and label. The uniqueness constraint is also the index every
// MERGE looks the key up in, and it makes concurrent MERGEs of one key from several graph
// writers create a single node.
CREATE CONSTRAINT work_key IF NOT EXISTS FOR (n:Work) REQUIRE n.key IS UNIQUE;
CREATE CONSTRAINT author_key IF NOT EXISTS FOR (n:Author) REQUIRE n.key IS UNIQUE;
CREATE CONSTRAINT edition_key IF NOT EXISTS FOR (n:Edition) REQUIRE n.key IS UNIQUE;
CREATE CONSTRAINT subject_key IF NOT EXISTS FOR (n:Subject) REQUIRE n.key IS UNIQUE;
