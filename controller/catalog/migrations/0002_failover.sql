CREATE TABLE targets (
	name       TEXT PRIMARY KEY,
	agent_id   TEXT NOT NULL,
	spec       TEXT NOT NULL, -- api.Target as JSON
	created_ns INTEGER NOT NULL
);

-- Jobs are persisted state machines; data is the job as JSON (jobs.Job).
CREATE TABLE jobs (
	id         TEXT PRIMARY KEY,
	kind       TEXT NOT NULL,
	state      TEXT NOT NULL,
	data       TEXT NOT NULL,
	created_ns INTEGER NOT NULL,
	updated_ns INTEGER NOT NULL
);
CREATE INDEX jobs_by_state ON jobs(state);

-- One mutating job per machine at a time.
CREATE TABLE job_locks (
	machine TEXT PRIMARY KEY,
	job_id  TEXT NOT NULL
);

-- Machine fields the failover engine keeps: whether the next cycle must
-- resync by hashes, and the current failover (api.FailoverInfo as JSON).
ALTER TABLE machines ADD COLUMN resync INTEGER NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN failover TEXT NOT NULL DEFAULT '';
