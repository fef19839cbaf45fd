package apply

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/msg"
)

// ConvertFormats are the formats Convert writes; raw needs no conversion
// (the set's own files are raw).
var ConvertFormats = []disk.Format{disk.FormatQCOW2, disk.FormatVHDX, disk.FormatVMDK}

// ConvertedPath is the copy of disk name in format f in set directory
// setDir.
func ConvertedPath(setDir, name string, f disk.Format) string {
	return msg.FormatCopyPath(DiskPath(setDir, name), string(f))
}

// Convert gives a disk set's disks in format f for a hypervisor that does
// not boot raw files: each disk is written by agent/disk's native writer
// (holes skipped, the file built as .tmp, fsynced and renamed) next to its
// raw file. A copy that exists is kept as it is — the machine may already
// run on it — and a move of the set deletes the copies first (BeginMove),
// so a copy always holds the set's point or the machine's own writes.
func (s *Site) Convert(ctx context.Context, ref msg.TargetRef, f disk.Format) (msg.TargetConvertResponse, error) {
	var resp msg.TargetConvertResponse
	if !convertible(f) {
		return resp, invalidf("convert to %q: want one of qcow2, vhdx, vmdk (raw needs no conversion)", f)
	}
	setDir, err := SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return resp, err
	}
	_, unlock, err := s.lockMachine(ctx, ref.Dir, ref.Machine, "convert of "+ref.Set)
	if err != nil {
		return resp, err
	}
	defer unlock()
	st, err := ReadState(setDir)
	if err != nil {
		return resp, fmt.Errorf("convert of machine %s: %w", ref.Machine, err)
	}
	if st.MovingTo != 0 {
		return resp, fmt.Errorf("%w: convert of machine %s: %s; move it to a point first", ErrRefused, ref.Machine, describe(ref.Set, st))
	}
	start := time.Now()
	for _, dk := range cleanDisks(st.Disks) {
		dst := ConvertedPath(setDir, dk.Name, f)
		resp.Paths = append(resp.Paths, dst)
		if ok, err := exists(dst); err != nil || ok {
			if err != nil {
				return resp, err
			}
			continue
		}
		n, err := convertDisk(ctx, DiskPath(setDir, dk.Name), dst, f)
		if err != nil {
			return resp, err
		}
		resp.Bytes += n
	}
	s.log.Info("disk set converted", "machine", ref.Machine, "set", ref.Set, "format", f, "point", st.Point,
		"bytes", resp.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return resp, nil
}

// convertDisk writes the raw file src as dst in format f and returns the
// bytes of src's extents it read.
func convertDisk(ctx context.Context, src, dst string, f disk.Format) (int64, error) {
	// The format is forced: a raw disk whose guest data begins with
	// another format's magic is still raw.
	in, err := disk.Open(src, disk.OpenOptions{Format: disk.FormatRaw})
	if err != nil {
		return 0, fmt.Errorf("convert %s: %w", src, err)
	}
	defer in.Close()
	var read int64
	err = disk.Write(ctx, dst, f, in, disk.WriteOptions{Progress: func(done, _ int64) { read = done }})
	if err != nil {
		return 0, fmt.Errorf("convert %s to %s: %w", src, f, err)
	}
	return read, nil
}

func convertible(f disk.Format) bool {
	for _, c := range ConvertFormats {
		if f == c {
			return true
		}
	}
	return false
}

// removeConversions deletes the set's format copies (and their temporary
// files): the set is about to hold another point.
func removeConversions(setDir string) error {
	entries, err := os.ReadDir(setDir)
	if err != nil {
		return pathErr("list", setDir, err)
	}
	removed := false
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !isConversion(name) {
			continue
		}
		p := filepath.Join(setDir, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return pathErr("remove", p, err)
		}
		removed = true
	}
	if removed {
		return pathErr("fsync", setDir, fsutil.SyncDir(setDir))
	}
	return nil
}

func isConversion(name string) bool {
	name = strings.TrimSuffix(name, ".tmp")
	for _, f := range ConvertFormats {
		if strings.HasSuffix(name, "."+string(f)) {
			return true
		}
	}
	return false
}

// RunningDiskPath is the file a machine started on the set runs on: its
// format copy when Convert made one, else the raw file. What the machine
// wrote is read from there (target.ship).
func RunningDiskPath(setDir, name string) (string, error) {
	if st, err := ReadState(setDir); err == nil && len(st.Paths) != 0 {
		for i, d := range st.Disks {
			if d.Name == name {
				return st.Paths[i], nil // the home disks are their own files
			}
		}
	}
	for _, f := range ConvertFormats {
		p := ConvertedPath(setDir, name, f)
		ok, err := exists(p)
		if err != nil {
			return "", err
		}
		if ok {
			return p, nil
		}
	}
	return DiskPath(setDir, name), nil
}
