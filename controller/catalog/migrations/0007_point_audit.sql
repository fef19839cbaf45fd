-- The point audit (issue 17, controller/scrub): when each retained point
-- was last re-read whole, and what that pass found damaged in it (JSON
-- list of api.PointDamage: disk, blocks, error; "[]" when clean). Keyed by
-- the repository's point id, which is never reused; rows of points that
-- retention dropped are removed by the next pass.
CREATE TABLE point_audits (
    point_id INTEGER PRIMARY KEY,
    machine TEXT NOT NULL,
    audited_ns INTEGER NOT NULL,
    damage TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX point_audits_machine ON point_audits(machine);
