package storage

// This file is the exported contract of the repository that the controller
// builds against. Implementations live in the other files of the package.
// Add to it freely; change a signature only together with its callers.

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"
)

// Hash is a chunk's content address: BLAKE3-256 of the block's plaintext.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses the 64-hex-digit form produced by Hash.String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("storage: malformed hash %q", s)
	}
	copy(h[:], b)
	return h, nil
}

// Codec says how a chunk's bytes are encoded (before encryption at rest).
type Codec uint8

const (
	CodecNone Codec = 0 // plaintext as is
	CodecZstd Codec = 1 // one zstd frame
	CodecS2   Codec = 2 // one S2 block (github.com/klauspost/compress/s2), as an agent sent it
)

// Consistency is how a point's instant was obtained (DESIGN.md "Consistency").
type Consistency string

const (
	AppConsistent   Consistency = "app-consistent"
	CrashConsistent Consistency = "crash-consistent"
	Inconsistent    Consistency = "inconsistent"
)

// Chunk is one block's content as it travels into the repository.
type Chunk struct {
	Hash     Hash   // BLAKE3-256 of the plaintext; verified by Write
	Codec    Codec  // encoding of Data
	Data     []byte // encoded bytes (stored as is when Codec is zstd)
	PlainLen int    // length of the plaintext
}

// PatchRun replaces Data at Offset within a block.
type PatchRun struct {
	Offset int
	Data   []byte
}

// DiskSpec names one disk of a machine. BlockSize is fixed for the disk's
// life in the repository; Size may change from point to point.
type DiskSpec struct {
	Name      string
	Size      int64
	BlockSize int
}

// BlockWrite sets one block of a pending point. Exactly one of Zero, Chunk,
// Patch, or (none of them: dedup against an already stored chunk) Hash applies.
type BlockWrite struct {
	Disk  string
	Block int64
	Zero  bool       // the block is all zeros: no chunk is needed
	Hash  Hash       // content hash of the resulting block (unless Zero)
	Chunk *Chunk     // the content; nil means "a chunk with Hash is already stored"
	Patch []PatchRun // the content is the block's current content with these runs applied
	// PatchData is Patch as it arrived: its encoding (encodePatch, the
	// protocol's patch layout) in a codec, stored as is in a plain
	// repository (docs/storage-format.md "Patch records"). Either may be
	// nil: Write encodes Patch, or decodes PatchData. A caller that has
	// both gives both, and must make them agree (a record that does not
	// give its hash fails its point). Its Hash is ignored.
	PatchData *Chunk
}

// CommitInfo stamps a pending point when it becomes a recovery point.
type CommitInfo struct {
	Instant     time.Time // the view's instant on the controller's clock
	Consistency Consistency
	Name        string // optional
}

// Point is a committed recovery point.
type Point struct {
	ID          int64
	Machine     string
	Instant     time.Time
	Consistency Consistency
	Name        string
	Bytes       int64 // stored bytes of the chunks this point's changes introduced
	Changed     int64 // blocks this point changed
	Disks       []DiskSpec
	Committed   time.Time
	// Damaged: the point reads a chunk marked damaged (MarkDamaged), so
	// some of its blocks cannot be read until the content is stored again.
	Damaged bool
}

// BlockFunc receives one block of a disk view. Zero blocks have zero=true and
// a zero Hash.
type BlockFunc func(block int64, h Hash, zero bool) error

// Repository is the contract; *Repo implements it.
type Repository interface {
	Close() error
	Encrypted() bool

	HasChunks(ctx context.Context, hashes []Hash) ([]bool, error)
	HasChunksOf(ctx context.Context, owners []string, hashes []Hash) ([]bool, error)
	ReadChunk(ctx context.Context, h Hash) ([]byte, error)
	MarkDamaged(ctx context.Context, hashes []Hash, reason string) (int, error)
	MarkMissing(ctx context.Context, chunkIDs []int64, reason string) (int, error)
	DamagedHashes(ctx context.Context) (map[Hash]bool, error)

	BeginPoint(ctx context.Context, machine string, disks []DiskSpec) (*Pending, error)
	PendingPoint(ctx context.Context, machine string) (*Pending, error) // ErrNotFound if none

	Points(ctx context.Context, machine string) ([]Point, error)
	Point(ctx context.Context, id int64) (Point, error)
	PointAt(ctx context.Context, machine string, t time.Time) (Point, error)
	LabelPoint(ctx context.Context, id int64, name string) error
	DeletePoint(ctx context.Context, id int64) error
	DeleteMachine(ctx context.Context, machine string) error
	Prune(ctx context.Context, machine string, olderThan time.Time) (int, error)
	Machines(ctx context.Context) ([]string, error)

	OpenDisk(ctx context.Context, pointID int64, disk string) (*DiskReader, error)
	Diff(ctx context.Context, machine, disk string, from, to int64, fn BlockFunc) error
	HeadBlocks(ctx context.Context, machine, disk string, fn BlockFunc) error

	Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error)
	GC(ctx context.Context, opts GCOptions) (GCReport, error)
	Stats(ctx context.Context) (Stats, error)
}

var _ Repository = (*Repo)(nil)
