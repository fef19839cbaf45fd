CREATE TABLE tokens (
	id          TEXT PRIMARY KEY,
	secret_hash BLOB NOT NULL,
	created_ns  INTEGER NOT NULL,
	expires_ns  INTEGER NOT NULL,
	uses        INTEGER NOT NULL,
	used        INTEGER NOT NULL DEFAULT 0,
	revoked     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE agents (
	id             TEXT PRIMARY KEY,
	name           TEXT NOT NULL,
	token_id       TEXT NOT NULL,
	cert_serial    TEXT NOT NULL,
	cert_not_after INTEGER NOT NULL,
	enrolled_ns    INTEGER NOT NULL,
	last_seen_ns   INTEGER NOT NULL DEFAULT 0,
	address        TEXT NOT NULL DEFAULT '',
	version        TEXT NOT NULL DEFAULT '',
	platform       TEXT NOT NULL DEFAULT '',
	hostname       TEXT NOT NULL DEFAULT '',
	revoked        INTEGER NOT NULL DEFAULT 0,
	removed        INTEGER NOT NULL DEFAULT 0
);
-- A removed agent's name may be enrolled again.
CREATE UNIQUE INDEX agents_live_name ON agents(name) WHERE removed = 0;

-- Every certificate serial ever issued, so a revoked agent's older and newer
-- certificates are all refused and a certificate we never issued is known.
CREATE TABLE certs (
	serial     TEXT PRIMARY KEY,
	agent_id   TEXT NOT NULL,
	not_after  INTEGER NOT NULL,
	revoked    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE policies (
	name TEXT PRIMARY KEY,
	spec TEXT NOT NULL -- api.Policy as JSON
);

CREATE TABLE machines (
	name        TEXT PRIMARY KEY,
	agent_id    TEXT NOT NULL,
	policy      TEXT NOT NULL,
	target      TEXT NOT NULL DEFAULT '',
	state       TEXT NOT NULL,
	active_site TEXT NOT NULL DEFAULT 'source',
	direction   TEXT NOT NULL DEFAULT 'forward',
	spec        TEXT NOT NULL, -- api.ProtectRequest as JSON
	created_ns  INTEGER NOT NULL,
	updated_ns  INTEGER NOT NULL
);
