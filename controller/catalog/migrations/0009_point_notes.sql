-- How each recovery point's view was made (issue "Physical servers and
-- plain files"): the method the agent named at cycle.end (reflink,
-- tracked-freeze, direct-read, …) and the reason, which for an
-- inconsistent point says why it could not be made consistent. Keyed by
-- the repository's point id, which is never reused; a point made before
-- this table, or by an agent that said nothing, has no row. Rows of
-- points that retention or a commit dropped are harmless (nothing lists
-- them); unprotect --delete-points removes the machine's rows.
CREATE TABLE point_notes (
    point_id INTEGER PRIMARY KEY,
    machine  TEXT NOT NULL,
    method   TEXT NOT NULL,
    reason   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX point_notes_machine ON point_notes(machine);
