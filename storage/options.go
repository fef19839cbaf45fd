package storage

import (
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Limits of the format (docs/storage-format.md "Limits").
const (
	MinBlockSize    = 512
	MaxBlockSize    = 1 << 20
	MinPackSize     = 64 << 10
	DefaultPackSize = 64 << 20
	maxNameLen      = 1024
)

// CreateOptions configure a new repository.
type CreateOptions struct {
	// PublicKey, when set, makes the repository encrypted: chunk data is
	// sealed to it and reading needs the matching private key.
	PublicKey *PublicKey
	// PackSize is the target size of a pack file before it is sealed.
	PackSize int64
	Logger   *slog.Logger
	Clock    func() time.Time

	sync syncer // tests only: remove one named fsync
}

// DefaultCreateOptions returns the defaults: unencrypted, 64 MiB packs.
func DefaultCreateOptions() CreateOptions {
	return CreateOptions{PackSize: DefaultPackSize}
}

// Validate checks the options.
func (o CreateOptions) Validate() error {
	if o.PackSize != 0 && o.PackSize < MinPackSize {
		return fmt.Errorf("storage: pack size %d below minimum %d", o.PackSize, MinPackSize)
	}
	return nil
}

// OpenOptions configure an open repository.
type OpenOptions struct {
	// PrivateKey lets this handle read plaintext of an encrypted
	// repository. Without it, writes and ciphertext verification work and
	// reads fail with ErrKeyRequired. See also Repo.WithPrivateKey.
	PrivateKey *PrivateKey
	Logger     *slog.Logger
	Clock      func() time.Time
	// ExclusiveLock opens the SQLite index in locking_mode=EXCLUSIVE so
	// that it needs no shared-memory (-shm) file and no mmap; for
	// filesystems such as FUSE test filesystems that cannot mmap.
	ExclusiveLock bool
	// Failpoint is a test hook called at named steps of the write paths
	// (docs/crash-semantics.md); nil in production.
	Failpoint func(name string)
	// RecentLimit is how many rows the index's recent level holds before
	// they are folded into its main tables (docs/storage-format.md "Recent
	// level"): 0 means the default, 262,144 (about 67 MB of memory, 255
	// bytes per row). A negative value folds after every write transaction.
	RecentLimit int

	sync syncer // tests only: remove one named fsync
}

// DefaultOpenOptions returns the defaults.
func DefaultOpenOptions() OpenOptions { return OpenOptions{} }

// Validate checks the options.
func (o OpenOptions) Validate() error { return nil }

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return l
}

func orNow(c func() time.Time) func() time.Time {
	if c == nil {
		return time.Now
	}
	return c
}

// Failpoint names (docs/crash-semantics.md).
const (
	FailPackAppended  = "pack.appended"   // batch written, before fdatasync
	FailPackSynced    = "pack.synced"     // after fdatasync, before the index commit
	FailIndexCommited = "index.committed" // after the index commit
	FailPackSealed    = "pack.sealed"     // footer synced, before the index says sealed
	FailGCRepack      = "gc.repack"       // live records copied, before the old pack is dropped
	FailGCDelete      = "gc.delete"       // between chunk-delete batches
	FailPruneMid      = "prune.mid"       // between two point deletions of one Prune
	FailCompactStep   = "compact.step"    // re-encoded records synced, before the index points at them
)
