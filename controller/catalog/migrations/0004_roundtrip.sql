-- The round trip (issue 11): the active site is named home or recovery
-- (the old words source and target are still read, for one release), and
-- a machine brought back by re-protection keeps what its reverse
-- replication needs (catalog.RoundTrip as JSON; '' when none).
UPDATE machines SET active_site='home' WHERE active_site='source';
UPDATE machines SET active_site='recovery' WHERE active_site='target';
ALTER TABLE machines ADD COLUMN roundtrip TEXT NOT NULL DEFAULT '';
