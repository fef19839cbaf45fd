package disk

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
)

// BlockWriter updates a disk image in place, as the guest sees it: WriteAt
// and Zero take guest offsets, and the container's own metadata is kept
// crash safe (see docs/disk-formats.md, "In-place writing").
//
// A BlockWriter is not safe for concurrent use.
type BlockWriter interface {
	// WriteAt writes p at guest offset off. It never writes past Size.
	WriteAt(p []byte, off int64) (int, error)
	// ReadAt reads the guest's bytes at off, as they are after every
	// completed WriteAt and Zero (the read side of the writer: an undo log
	// keeps what a write will overwrite). Ranges past Size are refused.
	ReadAt(p []byte, off int64) (int, error)
	// Zero makes [off, off+n) read as zeros, deallocating where the
	// format allows.
	Zero(off, n int64) error
	// Sync makes every completed WriteAt and Zero durable.
	Sync() error
	// Close syncs, releases the lock and closes the file.
	Close() error
	// Size is the virtual size in bytes.
	Size() int64
}

// ErrInUse: another process (a running QEMU, another Ferry writer) holds
// the image open in a way that conflicts with writing it.
var ErrInUse = errors.New("image in use")

// InPlaceOptions tunes OpenInPlace. The zero value is the production
// setting.
type InPlaceOptions struct {
	// Format forces the image's format; "" detects it from its magic. A
	// raw home disk whose guest wrote a container header at its first
	// byte is written as raw only when forced so.
	Format Format
	// Logger receives repairs and refusals; nil discards.
	Logger *slog.Logger
	// Failpoint, if set, is called with the name of each step of a
	// metadata update after the step is durable (tests kill the process
	// there). Names are the InPlaceStep* constants.
	Failpoint func(step string)
}

// Steps of an allocating qcow2 update, in order; see docs/disk-formats.md.
const (
	InPlaceStepData     = "data-synced"     // new clusters written and flushed, not yet counted
	InPlaceStepRefcount = "refcount-synced" // refcounts of new clusters flushed, not yet referenced
	InPlaceStepTable    = "table-synced"    // L1/L2 entries flushed: the write is complete
	InPlaceStepFree     = "free-synced"     // refcounts of replaced clusters dropped
)

func (o InPlaceOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o InPlaceOptions) fail(step string) {
	if o.Failpoint != nil {
		o.Failpoint(step)
	}
}

// OpenInPlace opens an existing raw image, block device, qcow2 or VHDX image for
// in-place block writes, holding a lock that QEMU honours. Formats that
// cannot be written in place safely are refused with a *FormatError that
// wraps ErrUnsupported and says what to do instead; an image another
// process holds is refused with an error wrapping ErrInUse.
func OpenInPlace(path string, opts InPlaceOptions) (BlockWriter, error) {
	c, err := openContainer(path, nil)
	if err != nil {
		return nil, err
	}
	format := opts.Format
	if format == "" {
		format, err = detect(c)
	}
	block := c.block
	c.Close()
	if err != nil {
		return nil, ioError(FormatRaw, path, "detect format", err)
	}
	if err := inPlaceFormat(format, path); err != nil {
		return nil, err
	}
	flags := os.O_RDWR
	if block {
		flags |= excl
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if block && isBusy(err) {
			return nil, &FormatError{Format: format, Path: path, Reason: "block device is open exclusively elsewhere (mounted or held)", Err: fmt.Errorf("%w: %w", ErrInUse, err)}
		}
		return nil, ioError(format, path, "open for writing", err)
	}
	if err := lockImage(f); err != nil {
		f.Close()
		if errors.Is(err, ErrInUse) {
			return nil, &FormatError{Format: format, Path: path,
				Reason: "another process holds the image (a running QEMU or another writer); stop it first", Err: err}
		}
		return nil, ioError(format, path, "lock", err)
	}
	var w BlockWriter
	switch format {
	case FormatRaw:
		w, err = newRawInPlace(f, path, block)
	case FormatQCOW2:
		w, err = openQCOW2InPlace(f, path, opts)
	case FormatVHDX:
		w, err = openVHDXInPlace(f, path, opts)
	}
	if err != nil {
		f.Close() // closing the descriptor drops its OFD locks
		return nil, err
	}
	return w, nil
}

// rawInPlace writes a raw image or block device with positioned writes.
type rawInPlace struct {
	f     *os.File
	path  string
	size  int64
	block bool
}

func newRawInPlace(f *os.File, path string, block bool) (*rawInPlace, error) {
	size, _, err := statSize(f)
	if err != nil {
		return nil, ioError(FormatRaw, path, "size", err)
	}
	return &rawInPlace{f: f, path: path, size: size, block: block}, nil
}

func (r *rawInPlace) Size() int64 { return r.size }

func (r *rawInPlace) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatRaw, r.path, off, int64(len(p)), r.size); err != nil {
		return 0, err
	}
	n, err := r.f.WriteAt(p, off)
	if err != nil {
		return n, ioError(FormatRaw, r.path, "write", err)
	}
	return n, nil
}

func (r *rawInPlace) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatRaw, r.path, off, int64(len(p)), r.size); err != nil {
		return 0, err
	}
	n, err := r.f.ReadAt(p, off)
	if err != nil {
		return n, ioError(FormatRaw, r.path, "read", err)
	}
	return n, nil
}

func (r *rawInPlace) Zero(off, n int64) error {
	if err := checkRange(FormatRaw, r.path, off, n, r.size); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if !r.block {
		if err := punchHole(r.f, off, n); err == nil {
			return nil
		}
	}
	return writeZeros(r.f, FormatRaw, r.path, off, n)
}

func (r *rawInPlace) Sync() error {
	if err := r.f.Sync(); err != nil {
		return ioError(FormatRaw, r.path, "sync", err)
	}
	return nil
}

func (r *rawInPlace) Close() error {
	err := r.Sync()
	if cerr := r.f.Close(); err == nil && cerr != nil {
		err = ioError(FormatRaw, r.path, "close", cerr)
	}
	return err
}

// writeZeros writes n zero bytes at off, in bounded chunks.
func writeZeros(w io.WriterAt, f Format, path string, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := w.WriteAt(buf[:k], off); err != nil {
			return ioError(f, path, "write zeros", err)
		}
		off, n = off+k, n-k
	}
	return nil
}

func checkRange(f Format, path string, off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return &FormatError{Format: f, Path: path, Reason: fmt.Sprintf("write of %d bytes at %d outside the %d-byte disk", n, off, size), Err: ErrOutOfRange}
	}
	return nil
}

// ErrOutOfRange: a write or zero range reaches past the virtual size.
var ErrOutOfRange = errors.New("range outside the disk")
