package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrRevoked marks an agent or certificate that was revoked.
var ErrRevoked = errors.New("revoked")

// Agent is an enrolled agent.
type Agent struct {
	ID           string
	Name         string
	TokenID      string
	CertSerial   string
	CertNotAfter time.Time
	Enrolled     time.Time
	LastSeen     time.Time
	Address      string
	Version      string
	Platform     string
	Hostname     string
	Revoked      bool
}

const agentCols = `id, name, token_id, cert_serial, cert_not_after, enrolled_ns, last_seen_ns, address, version, platform, hostname, revoked`

func scanAgent(sc interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	var notAfter, enrolled, seen int64
	err := sc.Scan(&a.ID, &a.Name, &a.TokenID, &a.CertSerial, &notAfter, &enrolled, &seen, &a.Address, &a.Version, &a.Platform, &a.Hostname, &a.Revoked)
	a.CertNotAfter, a.Enrolled, a.LastSeen = fromNS(notAfter), fromNS(enrolled), fromNS(seen)
	return a, err
}

// AddAgent records a newly enrolled agent and its first certificate. It runs
// inside the token's transaction (see ConsumeToken).
func AddAgent(ctx context.Context, tx *sql.Tx, a Agent) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO agents (`+agentCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		a.ID, a.Name, a.TokenID, a.CertSerial, ns(a.CertNotAfter), ns(a.Enrolled), ns(a.LastSeen), a.Address, a.Version, a.Platform, a.Hostname, a.Revoked)
	if isUnique(err) {
		return fmt.Errorf("agent name %q is taken (remove the old agent or choose another --name): %w", a.Name, ErrExists)
	}
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO certs (serial, agent_id, not_after) VALUES (?,?,?)`, a.CertSerial, a.ID, ns(a.CertNotAfter))
	return err
}

// Agent finds an agent by id or by name.
func (c *Catalog) Agent(ctx context.Context, idOrName string) (Agent, error) {
	a, err := scanAgent(c.db.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE removed = 0 AND (id = ? OR name = ?) LIMIT 1`, idOrName, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("agent %q: %w", idOrName, ErrNotFound)
	}
	return a, err
}

// Agents lists every agent by name.
func (c *Catalog) Agents(ctx context.Context) ([]Agent, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT `+agentCols+` FROM agents WHERE removed = 0 ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// AgentSeen records what a connecting agent says of itself.
func (c *Catalog) AgentSeen(ctx context.Context, id, address, version, platform, hostname string) error {
	_, err := c.db.ExecContext(ctx, `UPDATE agents SET last_seen_ns = ?, address = ?, version = ?, platform = ?, hostname = ? WHERE id = ?`,
		ns(c.now()), address, version, platform, hostname, id)
	return err
}

// TouchAgent updates last_seen.
func (c *Catalog) TouchAgent(ctx context.Context, id string) error {
	_, err := c.db.ExecContext(ctx, `UPDATE agents SET last_seen_ns = ? WHERE id = ?`, ns(c.now()), id)
	return err
}

// AddCert records a renewed certificate for an agent.
func (c *Catalog) AddCert(ctx context.Context, agentID, serial string, notAfter time.Time) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO certs (serial, agent_id, not_after) VALUES (?,?,?)`, serial, agentID, ns(notAfter)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE agents SET cert_serial = ?, cert_not_after = ? WHERE id = ?`, serial, ns(notAfter), agentID)
		return err
	})
}

// RetireOtherCerts revokes every other certificate of agentID once serial,
// its newest (the one renewal issued last), is in use: from then on only
// that one opens sessions. An older serial in use retires nothing, so a
// renewal whose answer never reached the agent does not lock it out. It
// returns how many certificates it revoked.
func (c *Catalog) RetireOtherCerts(ctx context.Context, agentID, serial string) (int64, error) {
	res, err := c.db.ExecContext(ctx, `UPDATE certs SET revoked = 1 WHERE agent_id = ? AND serial != ? AND revoked = 0
		AND EXISTS (SELECT 1 FROM agents WHERE id = ? AND cert_serial = ?)`, agentID, serial, agentID, serial)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// CertStatus says whether a certificate serial may open a session: it must
// be known, not revoked, and belong to a non-revoked agent. It returns the
// agent id.
func (c *Catalog) CertStatus(ctx context.Context, serial string) (agentID string, err error) {
	var revoked, agentRevoked bool
	err = c.db.QueryRowContext(ctx, `SELECT c.agent_id, c.revoked, a.revoked FROM certs c JOIN agents a ON a.id = c.agent_id WHERE c.serial = ?`, serial).
		Scan(&agentID, &revoked, &agentRevoked)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("certificate serial %s: %w", serial, ErrNotFound)
	}
	if err != nil {
		return "", err
	}
	if revoked || agentRevoked {
		return agentID, fmt.Errorf("agent %s: %w", agentID, ErrRevoked)
	}
	return agentID, nil
}

// RevokeAgent revokes an agent and every certificate it holds.
func (c *Catalog) RevokeAgent(ctx context.Context, idOrName string) (Agent, error) {
	a, err := c.Agent(ctx, idOrName)
	if err != nil {
		return a, err
	}
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET revoked = 1 WHERE id = ?`, a.ID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE certs SET revoked = 1 WHERE agent_id = ?`, a.ID)
		return err
	})
	a.Revoked = true
	return a, err
}

// RemoveAgent forgets an agent. Its certificates stay known (and revoked),
// so they cannot be used again.
func (c *Catalog) RemoveAgent(ctx context.Context, idOrName string) (Agent, error) {
	a, err := c.Agent(ctx, idOrName)
	if err != nil {
		return a, err
	}
	var n int
	if err := c.db.QueryRowContext(ctx, `SELECT count(*) FROM machines WHERE agent_id = ?`, a.ID).Scan(&n); err != nil {
		return a, err
	}
	if n > 0 {
		return a, fmt.Errorf("agent %s still protects %d machine(s); unprotect them first: %w", a.Name, n, ErrExists)
	}
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE certs SET revoked = 1 WHERE agent_id = ?`, a.ID); err != nil {
			return err
		}
		// Keep the row so its certificates stay attributable; free the name.
		_, err := tx.ExecContext(ctx, `UPDATE agents SET revoked = 1, removed = 1 WHERE id = ?`, a.ID)
		return err
	})
	return a, err
}
