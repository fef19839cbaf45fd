package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// Index schema versions. The index is rebuildable from the packs, but a
// newer schema is still refused rather than misread.
const (
	indexSchemaMin = 1
	indexSchemaMax = 6
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// connector opens SQLite connections with the repository's pragmas applied
// in an order the DSN parameters cannot express: locking_mode must be set
// before the first WAL access so that exclusive mode never creates -shm.
type connector struct {
	dsn       string
	exclusive bool
	drv       *sqlite3.SQLiteDriver
}

func newConnector(path string, exclusive bool) *connector {
	dsn := "file:" + sqliteURIPath(path) + "?_txlock=immediate"
	if exclusive {
		// The unix-excl VFS keeps the WAL index in heap memory from the
		// first access on: no -shm file and no mmap, even when the
		// database is already in WAL mode when it is opened.
		dsn += "&vfs=unix-excl"
	}
	c := &connector{dsn: dsn, exclusive: exclusive}
	c.drv = &sqlite3.SQLiteDriver{ConnectHook: c.hook}
	return c
}

// sqliteURIPath escapes what a SQLite URI's path cannot hold literally
// ('%' decodes, '?' starts the query, '#' the fragment): a directory
// named with them must still open the file inside it.
func sqliteURIPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
}

func (c *connector) hook(conn *sqlite3.SQLiteConn) error {
	var pragmas []string
	if c.exclusive {
		pragmas = append(pragmas, "PRAGMA locking_mode=EXCLUSIVE")
	}
	pragmas = append(pragmas,
		"PRAGMA mmap_size=0",
		"PRAGMA journal_mode=WAL",
		"PRAGMA synchronous=FULL",
		"PRAGMA cache_size=-65536", // 64 MiB
		// Small random writes (4 KiB blocks) touch most pages of the
		// hash-keyed indexes every cycle; checkpointing every 64 MiB of
		// WAL instead of SQLite's 4 MiB writes such a page into the
		// database once per several cycles instead of once per commit
		// (controller bytes written per byte churned 3.0 → 2.35). The
		// WAL is still synced at each commit: durability is unchanged.
		"PRAGMA wal_autocheckpoint=16384",
		"PRAGMA busy_timeout=10000",
		"PRAGMA foreign_keys=OFF",
	)
	for _, p := range pragmas {
		if _, err := conn.Exec(p, nil); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c *connector) Driver() driver.Driver                            { return c.drv }

// openIndex opens (creating if asked) the index database and migrates it.
func openIndex(ctx context.Context, path string, exclusive bool) (*sql.DB, error) {
	db := sql.OpenDB(newConnector(path, exclusive))
	// One connection: SQLite has one writer anyway, and an exclusive-mode
	// database cannot be shared between connections. Readers go through
	// the same connection; callers never hold rows open across queries.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, opErr("open index", path, err)
	}
	if err := migrate(ctx, db, path); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	ents, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("storage: migration file %q is not NNNN_name.sql", e.Name())
		}
		b, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// migrate applies every embedded migration newer than the index's
// user_version, each in its own transaction, and refuses a newer index.
func migrate(ctx context.Context, db *sql.DB, path string) error {
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return opErr("read schema version", path, err)
	}
	if v > indexSchemaMax {
		return &FormatVersionError{Subject: "index", Path: path, Found: v, Min: indexSchemaMin, Max: indexSchemaMax}
	}
	ms, err := migrations()
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.version <= v {
			continue
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return opErr("migrate", path, err)
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			tx.Rollback()
			return opErr("migrate "+m.name, path, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version=%d", m.version)); err != nil {
			tx.Rollback()
			return opErr("migrate "+m.name, path, err)
		}
		if err := tx.Commit(); err != nil {
			return opErr("migrate "+m.name, path, err)
		}
	}
	return nil
}

// column reads a one-column query's rows: column[int64](db.QueryContext(…)).
func column[T any](rows *sql.Rows, err error) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
