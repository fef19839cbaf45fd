package apply

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
)

// MaxDisks is the most disks a set may have: a block names its disk with a
// 16-bit index.
const MaxDisks = 1 << 16

// maxStateSize bounds state.json: a few hundred bytes per disk.
const maxStateSize = 16 << 20

// ValidateDisks checks a set's disk list: 1 to MaxDisks disks with valid,
// distinct names, sizes > 0 and block sizes in 1..data.MaxBlockSize.
func ValidateDisks(disks []msg.TargetDisk) error {
	if len(disks) == 0 || len(disks) > MaxDisks {
		return invalidf("%d disks: want 1 to %d", len(disks), MaxDisks)
	}
	seen := make(map[string]bool, len(disks))
	for i, d := range disks {
		if !ValidName(d.Name) {
			return invalidf("disk %d: name %q: want 1 to %d letters, digits, '.', '_' or '-', not starting with '.'", i, d.Name, MaxNameLen)
		}
		if seen[d.Name] {
			return invalidf("disk %d: name %q appears twice", i, d.Name)
		}
		seen[d.Name] = true
		if d.Size <= 0 {
			return invalidf("disk %s: size %d: want > 0", d.Name, d.Size)
		}
		if d.BlockSize <= 0 || d.BlockSize > data.MaxBlockSize {
			return invalidf("disk %s: block size %d: want 1 to %d", d.Name, d.BlockSize, data.MaxBlockSize)
		}
	}
	return nil
}

// cleanDisks copies disks without the answer-only Path field.
func cleanDisks(disks []msg.TargetDisk) []msg.TargetDisk {
	out := make([]msg.TargetDisk, len(disks))
	for i, d := range disks {
		out[i] = msg.TargetDisk{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize}
	}
	return out
}

// homeFormats are the formats the controller recorded for home disks
// (TargetDisk.Format, by index), or nil when none was recorded.
func homeFormats(disks []msg.TargetDisk) []string {
	var out []string
	for i, d := range disks {
		if d.Format != "" && out == nil {
			out = make([]string, len(disks))
		}
		if out != nil {
			out[i] = d.Format
		}
	}
	return out
}

// ReadState reads and checks the state.json of the set directory setDir.
// A missing directory or state file is ErrNotFound.
func ReadState(setDir string) (msg.DiskSetState, error) {
	path := filepath.Join(setDir, StateFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return msg.DiskSetState{}, fmt.Errorf("%w: %s", ErrNotFound, setDir)
	}
	if err != nil {
		return msg.DiskSetState{}, pathErr("open", path, err)
	}
	defer f.Close()
	var st msg.DiskSetState
	dec := json.NewDecoder(&limitedReader{f: f, left: maxStateSize})
	if err := dec.Decode(&st); err != nil {
		return msg.DiskSetState{}, pathErr("read", path, fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	if err := checkState(st); err != nil {
		return msg.DiskSetState{}, pathErr("read", path, fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	st.Disks = cleanDisks(st.Disks)
	return st, nil
}

func checkState(st msg.DiskSetState) error {
	if st.Point < 0 || st.MovingTo < 0 {
		return fmt.Errorf("negative point %d or moving_to %d", st.Point, st.MovingTo)
	}
	if err := ValidateDisks(st.Disks); err != nil {
		return err
	}
	if len(st.Paths) != 0 && len(st.Paths) != len(st.Disks) {
		return fmt.Errorf("%d paths for %d disks", len(st.Paths), len(st.Disks))
	}
	if len(st.Formats) != 0 && len(st.Formats) != len(st.Paths) {
		return fmt.Errorf("%d formats for %d paths", len(st.Formats), len(st.Paths))
	}
	for _, p := range st.Paths {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("disk path %q is not absolute", p)
		}
	}
	return nil
}

// writeState writes state.json on the small-file durable path: temp file,
// fsync, rename, directory fsync.
func writeState(setDir string, st msg.DiskSetState) error {
	st.Disks = cleanDisks(st.Disks)
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("apply: encode state: %w", err)
	}
	path := filepath.Join(setDir, StateFile)
	return pathErr("write", path, fsutil.WriteFileAtomic(path, append(b, '\n'), 0o600))
}

// limitedReader fails, rather than truncates, past its limit.
type limitedReader struct {
	f    *os.File
	left int64
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, fmt.Errorf("state file larger than %d bytes", maxStateSize)
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.f.Read(p)
	r.left -= int64(n)
	return n, err
}

// describe says what a set holds, for refusals.
func describe(set string, st msg.DiskSetState) string {
	s := fmt.Sprintf("%s holds point %d", set, st.Point)
	if st.MovingTo != 0 {
		s = fmt.Sprintf("%s is between points %d and %d (a move to %d was interrupted)", set, st.Point, st.MovingTo, st.MovingTo)
	}
	if st.Written {
		s += " and the machine has written to it since"
	}
	return s
}
