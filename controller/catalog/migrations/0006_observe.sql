-- Observability (issue 18). The audit trail: one row per mutating admin
-- call, appended and never updated; who/what/result are text, the request
-- body is JSON with secrets already redacted by the admin layer.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns    INTEGER NOT NULL,
    who      TEXT NOT NULL,
    via      TEXT NOT NULL,
    method   TEXT NOT NULL,
    path     TEXT NOT NULL,
    targets  TEXT NOT NULL DEFAULT '[]',
    body     TEXT NOT NULL DEFAULT '',
    result   TEXT NOT NULL,
    code     TEXT NOT NULL DEFAULT '',
    message  TEXT NOT NULL DEFAULT '',
    job      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_at ON audit (at_ns);

-- Alert rules: a webhook and the events it is sent; spec is api.AlertRule
-- JSON. Delivery state (last error, counts) lives beside it so
-- `alerts list` shows failures across restarts.
CREATE TABLE alerts (
    name     TEXT PRIMARY KEY,
    spec     TEXT NOT NULL,
    status   TEXT NOT NULL DEFAULT '{}'
);

-- Open incidents: an incident fires once when it opens and resolves once
-- when it clears; the row keeps it open across restarts so a restart
-- neither refires nor forgets it.
CREATE TABLE alert_incidents (
    key       TEXT PRIMARY KEY,
    event     TEXT NOT NULL,
    subject   TEXT NOT NULL,
    opened_ns INTEGER NOT NULL,
    detail    TEXT NOT NULL DEFAULT ''
);
