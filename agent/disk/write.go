package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteOptions tunes Write.
type WriteOptions struct {
	// Progress, if set, is called as data is written: done and total are
	// bytes of the source's extents.
	Progress func(done, total int64)
}

// imageWriter lays out one format. The driver hands it the non-zero
// units of the guest in ascending order, each unit at a multiple of
// unit() and at most unit() long.
type imageWriter interface {
	unit() int64
	write(off int64, p []byte) error
	finish() error
}

// Write writes src to dst in format, skipping holes and zero units: dst
// is written as dst.tmp, fsynced and renamed into place, so a crash leaves
// either the old dst or the complete new one.
func Write(ctx context.Context, dst string, format Format, src Source, opts WriteOptions) error {
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	var w imageWriter
	switch format {
	case FormatRaw:
		w, err = newRawWriter(f, src.Size())
	case FormatQCOW2:
		w, err = newQCOW2Writer(f, src.Size())
	case FormatVHDX:
		w, err = newVHDXWriter(f, src.Size())
	case FormatVMDK:
		w, err = newVMDKWriter(f, src.Size(), filepath.Base(dst))
	default:
		err = &FormatError{Format: format, Path: dst, Reason: "no writer for this format (raw, qcow2, vhdx, vmdk)", Err: ErrUnsupported}
	}
	if err != nil {
		return err
	}
	if err := copyUnits(ctx, w, src, opts.Progress); err != nil {
		return err
	}
	if err := w.finish(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	ok = true
	return syncDir(filepath.Dir(dst))
}

// copyUnits reads the source's extents unit by unit and hands the
// non-zero units to the writer.
func copyUnits(ctx context.Context, w imageWriter, src Source, progress func(done, total int64)) error {
	ext, err := src.Extents(ctx)
	if err != nil {
		return err
	}
	total := totalExtentBytes(ext)
	u := w.unit()
	buf := make([]byte, u)
	var done int64
	next := int64(0) // first unit not yet written
	for _, e := range ext {
		for off := max(e.Offset/u*u, next); off < e.End(); off += u {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(u, src.Size()-off)
			p := buf[:n]
			if k, err := src.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
				return fmt.Errorf("read source at %d: %w", off, err)
			}
			if !isZero(p) {
				if err := w.write(off, p); err != nil {
					return err
				}
			}
			next = off + u
			done += min(off+n, e.End()) - max(off, e.Offset)
			if progress != nil {
				progress(done, total)
			}
		}
	}
	if progress != nil && done != total {
		progress(total, total)
	}
	return nil
}

func totalExtentBytes(ext []Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Length
	}
	return n
}

var zeroBlock = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// roundSector rounds a size up to whole 512-byte sectors: the image
// formats count sectors, a guest disk is a whole number of them.
func roundSector(n int64) int64 { return (n + 511) &^ 511 }

// rawWriter writes a sparse raw file.
type rawWriter struct{ f *os.File }

func newRawWriter(f *os.File, size int64) (*rawWriter, error) {
	return &rawWriter{f: f}, f.Truncate(size)
}

func (w *rawWriter) unit() int64 { return 64 << 10 }

func (w *rawWriter) write(off int64, p []byte) error {
	_, err := w.f.WriteAt(p, off)
	return err
}

func (w *rawWriter) finish() error { return nil }
