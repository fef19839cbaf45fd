-- Ferry repository index, schema version 4 (docs/storage-format.md
-- "Compaction"): the chunks the compactor re-encodes to zstd are the S2
-- ones of a plain repository; this index finds them without a scan of
-- every chunk.
CREATE INDEX chunks_s2 ON chunks (id) WHERE codec = 2 AND key_slot = 0;
