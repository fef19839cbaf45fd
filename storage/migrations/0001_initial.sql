-- Ferry repository index, schema version 1 (docs/storage-format.md "Index").
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

-- One row per pack file; id is the 64-bit pack id stored as a signed integer.
CREATE TABLE packs (
	id         INTEGER PRIMARY KEY,
	state      TEXT    NOT NULL CHECK (state IN ('open', 'sealed')),
	size       INTEGER NOT NULL, -- bytes indexed (durable) so far
	created_ns INTEGER NOT NULL
);

-- Sealed data keys by slot (copies of the key records in the packs).
CREATE TABLE keys (
	slot   INTEGER PRIMARY KEY,
	sealed BLOB NOT NULL
);

CREATE TABLE chunks (
	id        INTEGER PRIMARY KEY,
	hash      BLOB    NOT NULL UNIQUE,
	pack_id   INTEGER NOT NULL,
	offset    INTEGER NOT NULL,
	length    INTEGER NOT NULL, -- whole record
	plain_len INTEGER NOT NULL,
	codec     INTEGER NOT NULL,
	key_slot  INTEGER NOT NULL
);
CREATE INDEX chunks_pack ON chunks (pack_id, offset);

CREATE TABLE disks (
	id         INTEGER PRIMARY KEY,
	machine    TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	block_size INTEGER NOT NULL,
	UNIQUE (machine, name)
);

CREATE TABLE points (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	machine      TEXT    NOT NULL,
	state        TEXT    NOT NULL CHECK (state IN ('pending', 'committed', 'deleted')),
	instant_ns   INTEGER NOT NULL DEFAULT 0,
	consistency  TEXT    NOT NULL DEFAULT '',
	name         TEXT    NOT NULL DEFAULT '',
	label_serial INTEGER NOT NULL DEFAULT 0,
	bytes        INTEGER NOT NULL DEFAULT 0,
	changed      INTEGER NOT NULL DEFAULT 0,
	committed_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX points_machine ON points (machine, state, id);
CREATE INDEX points_instant ON points (machine, instant_ns) WHERE state = 'committed';
CREATE UNIQUE INDEX points_one_pending ON points (machine) WHERE state = 'pending';

CREATE TABLE point_disks (
	point_id INTEGER NOT NULL,
	disk_id  INTEGER NOT NULL,
	size     INTEGER NOT NULL,
	PRIMARY KEY (point_id, disk_id)
) WITHOUT ROWID;

-- seq is the id of the point that wrote the row; chunk_id NULL = zero block.
CREATE TABLE changes (
	disk_id  INTEGER NOT NULL,
	block    INTEGER NOT NULL,
	seq      INTEGER NOT NULL,
	chunk_id INTEGER,
	PRIMARY KEY (disk_id, block, seq)
) WITHOUT ROWID;
-- A point's changes per disk, and the rows between two points (Diff).
CREATE INDEX changes_seq ON changes (disk_id, seq, block, chunk_id);
-- GC's "is this chunk referenced" check.
CREATE INDEX changes_chunk ON changes (chunk_id) WHERE chunk_id IS NOT NULL;

-- Point records (changes, commit, delete, label) and where they are.
CREATE TABLE records (
	pack_id  INTEGER NOT NULL,
	offset   INTEGER NOT NULL,
	length   INTEGER NOT NULL,
	type     INTEGER NOT NULL,
	flags    INTEGER NOT NULL DEFAULT 0,
	point_id INTEGER NOT NULL,
	PRIMARY KEY (pack_id, offset)
) WITHOUT ROWID;
CREATE INDEX records_point ON records (point_id);
