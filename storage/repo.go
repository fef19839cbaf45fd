package storage

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"golang.org/x/sys/unix"
)

// Repo is an open repository. Its methods are safe for concurrent use.
// A Repo made by WithPrivateKey is a view sharing the same open repository
// with a different key; closing a view does nothing.
type Repo struct {
	c    *core
	priv *PrivateKey
	view bool
}

// core is the state shared by a Repo and its key views.
type core struct {
	dir      string
	cfg      repoConfig
	repoID   [16]byte
	pub      *PublicKey
	packSize int64
	log      *slog.Logger
	clock    func() time.Time
	fail     func(string)
	sync     syncer
	lock     *os.File
	db       *sql.DB
	zc       *codecs
	files    *packFiles
	closed   atomic.Bool

	// writeMu serialises pack appends and index write transactions: every
	// durable step of the write paths happens under it, in small pieces.
	writeMu sync.Mutex
	open    *openPack // the pack being appended, under writeMu
	nextKey uint32    // next data key slot, under writeMu
	// chunksAdded counts write batches that stored new chunks, so a writer
	// can tell whether another stored any since it looked its chunks up.
	chunksAdded atomic.Uint64
	// queue holds the batches waiting for the next group commit.
	queue commitQueue
	// checks are the background checks of patch records (patchcheck.go).
	checks *patchChecks
	// recent mirrors the index's recent level (recent.go).
	recent *recentLevel
	// fold is the fold round under way (foldround.go), under writeMu.
	fold *foldRound

	// Sizes of a commit's change records and flushes (tests lower them).
	partEntries int
	commitFlush int

	// gcMu lets only one GC run at a time (writes never take it).
	gcMu sync.Mutex

	keyMu sync.Mutex
	aeads map[uint32]cipher.AEAD // unwrapped data keys by slot
}

// Create makes a new, empty repository in dir (created if missing; it must
// be empty apart from what a previous interrupted Create left). The config
// file is written last, so a crash during Create leaves no repository.
func Create(ctx context.Context, dir string, opts CreateOptions) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	if opts.PackSize == 0 {
		opts.PackSize = DefaultPackSize
	}
	if _, err := os.Stat(filepath.Join(dir, configName)); err == nil {
		return fmt.Errorf("%w: %s", ErrExists, dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, packsDir), 0o700); err != nil {
		return opErr("mkdir", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, locksDir), 0o700); err != nil {
		return opErr("mkdir", dir, err)
	}
	lock, err := lockRepo(dir, true)
	if err != nil {
		return err
	}
	defer lock.Close()
	var id [16]byte
	rand.Read(id[:])
	cfg := repoConfig{
		FormatVersion: FormatVersionCurrent,
		RepoID:        hex.EncodeToString(id[:]),
		Created:       orNow(opts.Clock)().UTC(),
		ChunkHash:     "blake3",
		PackSize:      opts.PackSize,
	}
	if opts.PublicKey != nil {
		cfg.PublicKey = hex.EncodeToString(opts.PublicKey.Bytes())
	}
	// A leftover index from an interrupted Create holds nothing of value.
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		os.Remove(filepath.Join(dir, indexName+suffix))
	}
	db, err := openIndex(ctx, filepath.Join(dir, indexName), true)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES ('repo_id', ?), ('format_version', ?)`,
		cfg.RepoID, fmt.Sprint(FormatVersionCurrent))
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return opErr("create index", dir, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return opts.sync.writeFile(filepath.Join(dir, configName), append(b, '\n'), 0o600, syncConfigFile, syncConfigDir)
}

// lockRepo takes the repository's process lock (flock, released by the
// kernel when the process dies).
func lockRepo(dir string, creating bool) (*os.File, error) {
	if _, err := os.Stat(filepath.Join(dir, configName)); errors.Is(err, fs.ErrNotExist) && !creating {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotRepo, dir, configName)
	}
	// locks/ may be missing (a copied repository); it holds no data.
	if err := os.MkdirAll(filepath.Join(dir, locksDir), 0o700); err != nil {
		return nil, opErr("mkdir", dir, err)
	}
	path := filepath.Join(dir, locksDir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotRepo, dir)
	}
	if err != nil {
		return nil, opErr("open lock", path, err)
	}
	if err := flockWithin(f, lockWait); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, opErr("lock", path, err)
	}
	return f, nil
}

// lockWait is how long Open waits for a lock another descriptor holds.
// The lock belongs to the open file description, not to the process: a
// child forked by any goroutine of the process that closed the repository
// holds a copy of every descriptor, close-on-exec ones included, until it
// execs. On a loaded machine that window reaches milliseconds, and a
// restart in the same process (or a service manager restarting ferry
// while an old child is still starting) would otherwise fail with
// ErrLocked although nothing holds the repository. A second process
// really holding it still gets ErrLocked, after this wait.
var lockWait = 2 * time.Second

// flockWithin takes f's exclusive flock, trying again until wait has
// passed while another description holds it.
func flockWithin(f *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// Open opens an existing repository. Only one process may have it open.
func Open(ctx context.Context, dir string, opts OpenOptions) (*Repo, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	c := &core{
		dir: dir, cfg: cfg, packSize: cfg.PackSize,
		log:   orDiscard(opts.Logger).With("component", "storage", "repo", dir),
		clock: orNow(opts.Clock), fail: opts.Failpoint, sync: opts.sync,
		aeads:       map[uint32]cipher.AEAD{},
		partEntries: pack.MaxChangesPerRecord, commitFlush: commitFlushBytes,
		checks: newPatchChecks(),
		recent: newRecentLevel(recentLimit(opts.RecentLimit)),
	}
	if c.fail == nil {
		c.fail = func(string) {}
	}
	c.repoID, _ = cfg.repoID()
	if c.pub, err = cfg.publicKey(); err != nil {
		return nil, err
	}
	r := &Repo{c: c}
	if opts.PrivateKey != nil {
		if err := c.checkKey(opts.PrivateKey); err != nil {
			return nil, err
		}
		r.priv = opts.PrivateKey
	}
	if c.lock, err = lockRepo(dir, false); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.shutdown()
		}
	}()
	if c.zc, err = newCodecs(); err != nil {
		return nil, err
	}
	c.files = newPackFiles(c)
	if c.db, err = openIndex(ctx, filepath.Join(dir, indexName), opts.ExclusiveLock); err != nil {
		return nil, err
	}
	var rid string
	if err := c.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key='repo_id'`).Scan(&rid); err != nil {
		return nil, opErr("read index meta", dir, err)
	}
	if rid != cfg.RepoID {
		return nil, fmt.Errorf("%w: index belongs to repository %s, config says %s", ErrCorrupt, rid, cfg.RepoID)
	}
	if err := c.recoverPacks(ctx); err != nil {
		return nil, err
	}
	if err := c.loadRecent(ctx); err != nil {
		return nil, opErr("read the index's recent level", dir, err)
	}
	ok = true
	return r, nil
}

// checkKey refuses a private key that is not the repository's.
func (c *core) checkKey(k *PrivateKey) error {
	if c.pub == nil {
		return nil // unencrypted: any key is harmless and unused
	}
	if !k.Public().Equal(c.pub) {
		return fmt.Errorf("%w: key %.16s…, repository key %.16s…", ErrWrongKey, k.Public().Fingerprint(), c.pub.Fingerprint())
	}
	return nil
}

// WithPrivateKey returns a view of the same open repository that reads
// plaintext with k, for one operation (export, failover) given a key file
// at that moment. The view shares everything with r; Close on it is a no-op.
// A key that is not the repository's fails with ErrWrongKey.
func (r *Repo) WithPrivateKey(k *PrivateKey) (*Repo, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: nil key", ErrKeyRequired)
	}
	if err := r.c.checkKey(k); err != nil {
		return nil, err
	}
	return &Repo{c: r.c, priv: k, view: true}, nil
}

// Encrypted reports whether chunk data is encrypted at rest.
func (r *Repo) Encrypted() bool { return r.c.pub != nil }

// PublicKey returns the repository's public key, nil if unencrypted.
func (r *Repo) PublicKey() *PublicKey { return r.c.pub }

// ID returns the repository's 16-byte id (config "repo_id"), which the
// data-key wrap binds (docs/storage-format.md "Encryption").
func (r *Repo) ID() [16]byte { return r.c.repoID }

// Dir returns the repository directory.
func (r *Repo) Dir() string { return r.c.dir }

// Close closes the repository. Closing a key view does nothing.
func (r *Repo) Close() error {
	if r.view {
		return nil
	}
	if r.c.closed.Swap(true) {
		return nil
	}
	r.c.checks.all.Wait()
	r.c.writeMu.Lock()
	defer r.c.writeMu.Unlock()
	return r.c.shutdown()
}

func (c *core) shutdown() error {
	var err error
	if c.open != nil {
		err = errors.Join(err, trimPreallocation(c.open.f, c.open.size), c.open.f.Close())
		c.open = nil
	}
	if c.files != nil {
		c.files.closeAll()
	}
	if c.db != nil {
		err = errors.Join(err, c.db.Close())
	}
	if c.zc != nil {
		c.zc.close()
	}
	if c.lock != nil {
		err = errors.Join(err, c.lock.Close())
	}
	return err
}

func (c *core) check() error {
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}
