package catalog

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3" // the catalog's SQLite driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// SchemaVersion is the newest catalog schema this build knows.
const SchemaVersion = 9

// Sentinels callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrNewer    = errors.New("catalog written by a newer Ferry")
)

// Catalog is the controller's database.
type Catalog struct {
	db  *sql.DB
	now func() time.Time
}

// sqliteURIPath escapes what a SQLite URI's path cannot hold literally
// ('%' decodes, '?' starts the query, '#' the fragment): a data directory
// named with them must still open the file inside it.
func sqliteURIPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
}

// idleConns is how many connections the catalog keeps open between uses:
// enough for the admin API, the job engine and the agent sessions to read
// at once (WAL readers do not wait for the writer).
const idleConns = 16

// Open opens (creating and migrating) the catalog at path.
func Open(ctx context.Context, file string, now func() time.Time) (*Catalog, error) {
	if now == nil {
		now = time.Now
	}
	dsn := "file:" + sqliteURIPath(file) + "?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=5000&_foreign_keys=on&_txlock=immediate"
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("catalog: open %s: %w", file, err)
	}
	// Connections stay open once made: the pool's default of two idle
	// ones closed the rest after every burst, and a plan of 20 machines
	// opened ~100 connections in 3 s, each opening the WAL again and
	// syncing the directory on its first commit. The number open is not
	// bounded (a transaction may read through a second connection).
	db.SetMaxIdleConns(idleConns)
	c := &Catalog{db: db, now: now}
	if err := c.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the database.
func (c *Catalog) Close() error { return c.db.Close() }

func (c *Catalog) migrate(ctx context.Context) error {
	var have int
	if err := c.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&have); err != nil {
		return fmt.Errorf("catalog: read schema version: %w", err)
	}
	if have > SchemaVersion {
		return fmt.Errorf("%w: schema version %d, this build knows up to %d", ErrNewer, have, SchemaVersion)
	}
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		n, err := strconv.Atoi(strings.SplitN(e.Name(), "_", 2)[0])
		if err != nil || n <= have {
			continue
		}
		body, err := migrations.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return err
		}
		tx, err := c.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("catalog: migration %s: %w", e.Name(), err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", n)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// inTx runs fn in one transaction.
func (c *Catalog) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// isUnique reports a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) &&
		(se.ExtendedCode == sqlite3.ErrConstraintUnique || se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey)
}
