package rig

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// Hypervisor is a fake hypervisor for the exec driver: start records the
// machine running with the environment it was given (after checking that
// every disk in FERRY_DISKS exists, as CLI.md promises; or fails when the
// test said so with RefuseStart), stop records it stopped, status prints
// the state.
type Hypervisor struct {
	Dir string
}

// NewHypervisor makes its state directory.
func NewHypervisor(t testing.TB) *Hypervisor {
	t.Helper()
	return &Hypervisor{Dir: t.TempDir()}
}

// Driver returns the exec driver commands of a target.
func (h *Hypervisor) Driver() api.Driver {
	st := h.Dir + `/"$FERRY_MACHINE"`
	return api.Driver{
		Start:  `set -e; if [ -f ` + st + `.refuse ]; then if [ -s ` + st + `.refuse ]; then sh ` + st + `.refuse; fi; echo "refusing to start $FERRY_MACHINE" >&2; exit 1; fi; printf '%s\n' "$FERRY_DISKS" | while read -r d; do [ -z "$d" ] || [ -f "$d" ] || { echo "missing disk $d" >&2; exit 1; }; done; env | grep '^FERRY_' > ` + st + `.env; echo running > ` + st + `.state`,
		Stop:   `echo stopped > ` + st + `.state`,
		Status: `cat ` + st + `.state 2>/dev/null || echo absent`,
	}
}

// RefuseStart makes start of machine fail (exit 1) until AllowStart.
func (h *Hypervisor) RefuseStart(t testing.TB, machine string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(h.Dir, machine+".refuse"), nil, 0o644))
}

// RefuseStartAfter makes start of machine run script (sh) and then fail
// (exit 1) until AllowStart: a machine that booted, did something (wrote
// its disks, say) and crashed.
func (h *Hypervisor) RefuseStartAfter(t testing.TB, machine, script string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(h.Dir, machine+".refuse"), []byte(script), 0o644))
}

// AllowStart undoes RefuseStart.
func (h *Hypervisor) AllowStart(t testing.TB, machine string) {
	t.Helper()
	require.NoError(t, os.Remove(filepath.Join(h.Dir, machine+".refuse")))
}

// State returns a machine's power state ("absent" if never started).
func (h *Hypervisor) State(machine string) string {
	b, err := os.ReadFile(filepath.Join(h.Dir, machine+".state"))
	if err != nil {
		return "absent"
	}
	return strings.TrimSpace(string(b))
}

// Env returns the FERRY_* environment of a machine's last start.
func (h *Hypervisor) Env(t testing.TB, machine string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(h.Dir, machine+".env"))
	require.NoError(t, err, "machine %s was never started", machine)
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	var last string
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "FERRY_") {
			env[k], last = v, k
		} else if last != "" {
			env[last] += "\n" + line // FERRY_DISKS spans lines
		}
	}
	return env
}

// Disks returns the disk paths a machine was last started with.
func (h *Hypervisor) Disks(t testing.TB, machine string) []string {
	t.Helper()
	var out []string
	for _, d := range strings.Split(h.Env(t, machine)["FERRY_DISKS"], "\n") {
		if d != "" {
			out = append(out, d)
		}
	}
	return out
}

// SourceDriver is a source machine's exec driver over a state file: the
// machine reports "stopped" until started (so its views are powered-off,
// crash-consistent reads: the test writes its disks only between cycles).
func SourceDriver(dir string) api.Driver {
	st := filepath.Join(dir, "source.state")
	return api.Driver{
		Start:  "echo running > " + st,
		Stop:   "echo stopped > " + st,
		Status: "cat " + st + " 2>/dev/null || echo stopped",
	}
}

// SourceState reads the state SourceDriver keeps in dir.
func SourceState(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "source.state"))
	if err != nil {
		return "stopped"
	}
	return strings.TrimSpace(string(b))
}

// Image is a source disk image the test writes, with the bytes the test
// keeps of it (never read back from Ferry).
type Image struct {
	Path string
	Want []byte
}

// NewImage writes an image of size bytes of seeded random data, with a
// zero range (a hole for the reader to skip), and keeps its bytes.
func NewImage(t testing.TB, path string, seed uint64, size int) *Image {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	clear(b[size/4 : size/4+size/8])
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return &Image{Path: path, Want: b}
}

// Write overwrites n bytes at off with seeded random data, in the file
// and in the kept copy, and returns the copy as it is now.
func (im *Image) Write(t testing.TB, seed uint64, off, n int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, ^seed))
	p := im.Want[off : off+n]
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(im.Path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(p, int64(off))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return im.Snapshot()
}

// Snapshot is a copy of the kept bytes.
func (im *Image) Snapshot() []byte { return bytes.Clone(im.Want) }

// RequireFile requires the file at path to hold exactly want.
func RequireFile(t testing.TB, want []byte, path string, msgAndArgs ...any) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err, msgAndArgs...)
	defer f.Close()
	got, err := io.ReadAll(f)
	require.NoError(t, err, msgAndArgs...)
	require.Equal(t, len(want), len(got), "size of %s %v", path, msgAndArgs)
	if !bytes.Equal(want, got) {
		i := 0
		for i < len(want) && want[i] == got[i] {
			i++
		}
		require.Failf(t, "disk bytes differ", "%s first differs at offset %d of %d %v", path, i, len(want), msgAndArgs)
	}
}
