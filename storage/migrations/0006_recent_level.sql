-- Ferry repository index, schema version 6 (docs/storage-format.md "Recent
-- level"). Write transactions append their chunk and change rows here, in
-- rowid order, instead of inserting them into the hash- and block-keyed
-- B-trees of chunks and changes: small random writes touched a page of each
-- tree per block, every group commit. A fold moves these rows into chunks
-- and changes in one sorted transaction, every few tens of thousands of
-- rows and before any operation that reads the main tables only. Rows here
-- are as durable as rows there: the same transactions write them.
CREATE TABLE recent_chunks (
	id        INTEGER PRIMARY KEY,
	hash      BLOB    NOT NULL,
	pack_id   INTEGER NOT NULL,
	offset    INTEGER NOT NULL,
	length    INTEGER NOT NULL,
	plain_len INTEGER NOT NULL,
	codec     INTEGER NOT NULL,
	key_slot  INTEGER NOT NULL,
	base_id   INTEGER,
	depth     INTEGER NOT NULL DEFAULT 0
);
-- A later row for the same (disk_id, block, seq) replaces an earlier one
-- (a cycle that wrote the block twice): rowid order says which is later.
CREATE TABLE recent_changes (
	disk_id  INTEGER NOT NULL,
	block    INTEGER NOT NULL,
	seq      INTEGER NOT NULL,
	chunk_id INTEGER
);
