package catalog

import (
	"context"
	"encoding/json"

	"github.com/ferrydr/ferry/controller/api"
)

// AppendAudit adds one entry to the audit trail; its ID is assigned here.
func (c *Catalog) AppendAudit(ctx context.Context, e api.AuditEntry) (int64, error) {
	if e.Targets == nil {
		e.Targets = []string{}
	}
	tg, err := json.Marshal(e.Targets)
	if err != nil {
		return 0, err
	}
	res, err := c.db.ExecContext(ctx, `INSERT INTO audit (at_ns, who, via, method, path, targets, body, result, code, message, job)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		ns(e.Time), e.Who, e.Via, e.Method, e.Path, string(tg), string(e.Body), e.Result, e.Code, e.Message, e.Job)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// Audit lists the newest limit entries (all when limit <= 0), oldest first.
func (c *Catalog) Audit(ctx context.Context, limit int) ([]api.AuditEntry, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := c.db.QueryContext(ctx, `SELECT * FROM (SELECT id, at_ns, who, via, method, path, targets, body, result, code, message, job
		FROM audit ORDER BY id DESC LIMIT ?) ORDER BY id`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.AuditEntry{}
	for rows.Next() {
		var e api.AuditEntry
		var at int64
		var tg, body string
		if err := rows.Scan(&e.ID, &at, &e.Who, &e.Via, &e.Method, &e.Path, &tg, &body, &e.Result, &e.Code, &e.Message, &e.Job); err != nil {
			return nil, err
		}
		e.Time = fromNS(at).UTC()
		if err := json.Unmarshal([]byte(tg), &e.Targets); err != nil {
			return nil, err
		}
		if body != "" {
			e.Body = json.RawMessage(body)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
