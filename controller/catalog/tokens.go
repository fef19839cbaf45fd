package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Token errors, each a reason an enrolment is refused.
var (
	ErrTokenUnknown = errors.New("token unknown or wrong secret")
	ErrTokenExpired = errors.New("token expired")
	ErrTokenUsed    = errors.New("token already used")
	ErrTokenRevoked = errors.New("token revoked")
)

// Token is a stored enrolment token (the secret only as a hash).
type Token struct {
	ID         string
	SecretHash []byte
	Created    time.Time
	Expires    time.Time
	Uses       int
	Used       int
	Revoked    bool
}

// AddToken stores a new token.
func (c *Catalog) AddToken(ctx context.Context, t Token) error {
	_, err := c.db.ExecContext(ctx,
		`INSERT INTO tokens (id, secret_hash, created_ns, expires_ns, uses) VALUES (?,?,?,?,?)`,
		t.ID, t.SecretHash, ns(t.Created), ns(t.Expires), t.Uses)
	if isUnique(err) {
		return fmt.Errorf("token %s: %w", t.ID, ErrExists)
	}
	return err
}

// Tokens lists every token, newest first.
func (c *Catalog) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT id, secret_hash, created_ns, expires_ns, uses, used, revoked FROM tokens ORDER BY created_ns DESC`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var created, expires int64
		if err := rows.Scan(&t.ID, &t.SecretHash, &created, &expires, &t.Uses, &t.Used, &t.Revoked); err != nil {
			return nil, err
		}
		t.Created, t.Expires = fromNS(created), fromNS(expires)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken makes a token unusable.
func (c *Catalog) RevokeToken(ctx context.Context, id string) error {
	res, err := c.db.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return nil
}

// ConsumeToken checks a token and counts one use, atomically, then runs
// then (inside the same transaction) so that an enrolment that fails later
// does not burn the token. match compares the presented secret with the
// stored hash.
func (c *Catalog) ConsumeToken(ctx context.Context, id string, match func(hash []byte) bool, then func(tx *sql.Tx) error) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		var t Token
		var expires int64
		err := tx.QueryRowContext(ctx, `SELECT secret_hash, expires_ns, uses, used, revoked FROM tokens WHERE id = ?`, id).
			Scan(&t.SecretHash, &expires, &t.Uses, &t.Used, &t.Revoked)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !match(t.SecretHash)) {
			return ErrTokenUnknown
		}
		if err != nil {
			return err
		}
		switch {
		case t.Revoked:
			return ErrTokenRevoked
		case !c.now().Before(fromNS(expires)):
			return ErrTokenExpired
		case t.Used >= t.Uses:
			return ErrTokenUsed
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tokens SET used = used + 1 WHERE id = ?`, id); err != nil {
			return err
		}
		return then(tx)
	})
}
