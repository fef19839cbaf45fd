package disk

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
)

// Format names a disk image format.
type Format string

// The formats this package knows.
const (
	FormatRaw   Format = "raw"
	FormatVHDX  Format = "vhdx"
	FormatVHD   Format = "vhd"
	FormatVMDK  Format = "vmdk"
	FormatQCOW2 Format = "qcow2"
)

// Extent is a range of guest offsets.
type Extent struct{ Offset, Length int64 }

// End returns the first offset after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Source is the guest view of one virtual disk.
//
// ReadAt is safe for concurrent use. It returns zeros where nothing is
// allocated and io.EOF for reads that reach past Size.
type Source interface {
	io.ReaderAt
	// Size is the virtual size in bytes.
	Size() int64
	// Extents returns the ranges that may hold data, ascending,
	// non-overlapping and coalesced. Outside them the guest reads zeros.
	Extents(ctx context.Context) ([]Extent, error)
	Format() Format
	Close() error
}

// ReadStats counts the bytes actually read from container files (image
// files, extents, parents), so that tests can prove holes are not read.
type ReadStats struct{ Bytes atomic.Int64 }

// OpenOptions tunes Open. The zero value detects the format.
type OpenOptions struct {
	// Format forces a format; "" detects it from the file's magic.
	Format Format
	// Stats, if set, is added to on every read of an underlying file.
	Stats *ReadStats
	// BaseDir resolves relative backing, parent and extent file names;
	// "" means the directory of the image that names them.
	BaseDir string
	// AllowDirty opens images that would otherwise be refused with
	// ErrDirty (a qcow2 dirty bit; a VHDX log that cannot be replayed is
	// then ignored and the file read as it stands). For diagnostics only;
	// the agent never sets it.
	AllowDirty bool
}

// Info is what Probe learns from an image's headers.
type Info struct {
	Path        string
	Format      Format
	Subformat   string // e.g. "dynamic", "fixed", "differencing", "monolithicSparse", "v3"
	VirtualSize int64
	FileSize    int64
	Backing     []string // the parent/backing chain, nearest first, as resolved paths
	BlockDevice bool
}

// imageExtensions are the file name extensions IsImageFile accepts.
var imageExtensions = []string{".img", ".raw", ".vhd", ".vhdx", ".vmdk", ".qcow2", ".qcow"}

// IsImageFile reports whether a file name looks like a disk image, by its
// extension. It is meant for inventory; Probe decides the format.
func IsImageFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range imageExtensions {
		if ext == e {
			return true
		}
	}
	return false
}
