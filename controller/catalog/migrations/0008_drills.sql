-- Boot drills (issue 17): one row per drill (api.Drill JSON, less what the
-- controller fills in), one row per run with its report (api.DrillRun
-- JSON). A point is verified when a run of any drill passed on it; the
-- index finds a machine's newest verified point.
CREATE TABLE drills (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE drill_runs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    drill   TEXT NOT NULL,
    machine TEXT NOT NULL,
    point   INTEGER NOT NULL DEFAULT 0,
    started INTEGER NOT NULL,
    result  TEXT NOT NULL,
    report  TEXT NOT NULL
);
CREATE INDEX drill_runs_drill ON drill_runs (drill, id);
CREATE INDEX drill_runs_machine ON drill_runs (machine, result, point);
