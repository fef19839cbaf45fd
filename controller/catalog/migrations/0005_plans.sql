-- Recovery plans (issue 13): one row per plan, its groups and actions as
-- api.Plan JSON. Machines are named, not keyed: a plan naming a machine
-- that was unprotected says so when it runs.
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
