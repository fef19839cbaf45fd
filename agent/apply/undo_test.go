package apply

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// undoChildEnv names the file of the parameters of the child process that
// TestHomeMoveRolledBackAfterKill kills mid-move.
const undoChildEnv = "FERRY_TEST_UNDO_CHILD"

type undoChildParams struct {
	Dir    string           `json:"dir"` // the home set's target directory
	Disk   msg.TargetDisk   `json:"disk"`
	Blocks []undoChildBlock `json:"blocks"`
}

type undoChildBlock struct {
	Block uint64 `json:"block"`
	Data  []byte `json:"data"`
}

// TestUndoChild is not a test: it is the process TestHomeMoveRolledBackAfterKill
// starts and kills. It serves one restore stream into the home set whose
// batches all arrive but whose barrier never does, then waits to be killed.
func TestUndoChild(t *testing.T) {
	pf := os.Getenv(undoChildEnv)
	if pf == "" {
		t.Skip("the child process of TestHomeMoveRolledBackAfterKill")
	}
	var p undoChildParams
	require.NoError(t, json.Unmarshal(readFile(t, pf), &p))
	im := newImage(p.Disk)
	var refs []blockRef
	for _, b := range p.Blocks {
		copy(im.data[0][int64(b.Block)*int64(p.Disk.BlockSize):], b.Data)
		refs = append(refs, blockRef{0, b.Block})
	}
	site := newTestSite(t)
	ctrl, _ := serveTCP(t, site)
	h := header(p.Dir, "m", SetHome, 0, 7, im)
	h.Force = true
	fw := frame.NewWriter(ctrl)
	hb, err := json.Marshal(h)
	require.NoError(t, err)
	require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
	_, err = writeBatches(fw, 7, 0, im.encode(t, refs), 3)
	require.NoError(t, err)
	time.Sleep(10 * time.Minute) // killed long before
}

// homeFixture is a home disk in a given format whose guest content the
// test keeps, adopted as the home set of machine m.
type homeFixture struct {
	dir, img, format string
	disk             msg.TargetDisk
	orig             []byte // the guest content before any move
}

const undoBS = 64 << 10

func newHomeFixture(t *testing.T, format string, seed uint64) *homeFixture {
	t.Helper()
	const size = 4 << 20
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 1))
	orig := make([]byte, size)
	// Blocks 0..31 random, 32..47 zero (a hole), 48..63 random.
	for i := range orig {
		if b := i / undoBS; b < 32 || b >= 48 {
			orig[i] = byte(rng.Uint32())
		}
	}
	raw := filepath.Join(dir, "vm.raw")
	require.NoError(t, os.WriteFile(raw, orig[:32*undoBS], 0o600))
	writeAt(t, raw, orig[48*undoBS:], 48*undoBS)
	img := raw
	if format != "raw" {
		qemuImg := testenv.RequireTool(t, "qemu-img")
		img = filepath.Join(dir, "vm."+format)
		testenv.Run(t, qemuImg, "convert", "-f", "raw", "-O", format, raw, img)
		require.NoError(t, os.Remove(raw))
	}
	f := &homeFixture{dir: filepath.Join(dir, "state"), img: img, format: format, orig: orig,
		disk: msg.TargetDisk{Name: "d", Size: size, BlockSize: undoBS}}
	return f
}

func (f *homeFixture) setDir() string { return setPath(f.dir, "m", SetHome) }

// guest reads the home disk as a guest sees it, through qemu-img for
// containers (never through Ferry's own reader).
func (f *homeFixture) guest(t *testing.T) []byte {
	t.Helper()
	if f.format == "raw" {
		return readFile(t, f.img)
	}
	out := filepath.Join(t.TempDir(), "guest.raw")
	testenv.Run(t, "qemu-img", "convert", "-U", "-f", f.format, "-O", "raw", f.img, out)
	return readFile(t, out)
}

// held reads the guest content of a home disk another process holds
// (QEMU's own tools refuse it then): agent/disk's reader takes no lock.
// Only to see where a move is; results are checked with guest.
func (f *homeFixture) held(t *testing.T) []byte {
	t.Helper()
	b, err := f.readHeld()
	require.NoError(t, err)
	return b
}

// readHeld is held without failing the test: while another process is
// writing a qcow2 or VHDX image, a reader can meet its tables half
// updated (a cluster past the file's end) — a probe just tries again.
func (f *homeFixture) readHeld() ([]byte, error) {
	src, err := disk.Open(f.img, disk.OpenOptions{})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	b := make([]byte, src.Size())
	if _, err := src.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

// changes is a move's blocks: blocks 2..9 rewritten, blocks 10..13 sent
// with the content they already have, blocks 40..41 (a hole) written.
func (f *homeFixture) changes(seed uint64) (blocks []undoChildBlock, want []byte, changed int) {
	rng := rand.New(rand.NewPCG(seed, 2))
	want = bytes.Clone(f.orig)
	for b := uint64(2); b < 14; b++ {
		p := bytes.Clone(f.orig[b*undoBS : (b+1)*undoBS])
		if b < 10 {
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			changed++
		}
		blocks = append(blocks, undoChildBlock{Block: b, Data: p})
		copy(want[b*undoBS:], p)
	}
	for b := uint64(40); b < 42; b++ {
		p := bytes.Repeat([]byte{byte(b)}, undoBS)
		blocks = append(blocks, undoChildBlock{Block: b, Data: p})
		copy(want[b*undoBS:], p)
		changed++
	}
	return blocks, want, changed
}

// TestHomeMoveRolledBackAfterKill: a move into the home disks whose agent
// is killed (SIGKILL) after its blocks reached the disk but before the
// move finished leaves an undo log at the home site holding the old
// bytes of the blocks that changed, and only those; opening the set
// again — with no controller — rolls the blocks back: the home disk is
// the guest content the test kept, the set holds its old point and the
// log is gone. For qcow2 and VHDX the rollback goes through the in-place
// writer and qemu-img check stays clean.
func TestHomeMoveRolledBackAfterKill(t *testing.T) {
	for i, format := range []string{"raw", "qcow2", "vhdx"} {
		t.Run(format, func(t *testing.T) {
			f := newHomeFixture(t, format, uint64(i))
			s := newTestSite(t)
			ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
			_, err := s.Adopt(context.Background(), ref, []msg.TargetDisk{f.disk}, []string{f.img})
			require.NoError(t, err)
			s.Close() // the child process takes the home disks over

			blocks, want, changed := f.changes(uint64(i))
			p, err := json.Marshal(undoChildParams{Dir: f.dir, Disk: f.disk, Blocks: blocks})
			require.NoError(t, err)
			cmd := exec.Command(os.Args[0], "-test.run=^TestUndoChild$", "-test.v")
			pf := filepath.Join(t.TempDir(), "params.json")
			require.NoError(t, os.WriteFile(pf, p, 0o600))
			cmd.Env = append(os.Environ(), undoChildEnv+"="+pf)
			// The child's output goes to a file, not a buffer: exec copies
			// into a buffer from its own goroutine, and reading it for a
			// failure message while the child runs is a data race.
			outFile, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
			require.NoError(t, err)
			defer outFile.Close()
			out := childOutput(outFile.Name())
			cmd.Stdout, cmd.Stderr = outFile, outFile
			require.NoError(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			// Mid-move: every block of the move is on the home disk, the
			// barrier has not come, the state says the set is moving.
			require.Eventually(t, func() bool {
				st, err := ReadState(f.setDir())
				if err != nil || st.MovingTo != 7 {
					return false
				}
				b, err := f.readHeld()
				return err == nil && bytes.Equal(b, want)
			}, 3*time.Minute, 50*time.Millisecond, "the child never wrote the move's blocks: %s", out)
			require.NoError(t, cmd.Process.Kill())
			<-exited

			log := filepath.Join(f.setDir(), UndoLogFile)
			fi, err := os.Stat(log)
			require.NoError(t, err, "a home move keeps an undo log")
			require.LessOrEqual(t, fi.Size(), int64(undoHeaderSize+changed*(undoRecordOverhead+undoBS)),
				"the log holds the %d blocks that changed, not the blocks sent unchanged", changed)
			require.Greater(t, fi.Size(), int64(undoHeaderSize+(changed-2)*undoBS),
				"the log holds the old bytes of the changed blocks")

			set, err := OpenDiskSet(f.setDir(), SetOptions{})
			require.NoError(t, err)
			st := set.State()
			require.NoError(t, set.Close())
			require.Zero(t, st.MovingTo, "the set holds its old point again")
			require.Zero(t, st.Point)
			require.True(t, st.Written, "an adopted set keeps its Written mark: the controller re-plans from the kept point")
			require.True(t, bytes.Equal(f.orig, f.guest(t)), "the home disk is back to its bytes before the move")
			_, err = os.Stat(log)
			require.ErrorIs(t, err, os.ErrNotExist, "the rolled-back log is removed")
			if format != "raw" {
				testenv.Run(t, "qemu-img", "check", "-f", format, f.img)
			}
		})
	}
}

// TestHomeMoveFailureRollsBack: a home move that fails mid-stream (a block
// whose hash does not match) is rolled back by the agent at once: the
// home disk holds its old bytes and the set its old point.
func TestHomeMoveFailureRollsBack(t *testing.T) {
	f := newHomeFixture(t, "raw", 9)
	s := newTestSite(t)
	defer s.Close()
	ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
	_, err := s.Adopt(context.Background(), ref, []msg.TargetDisk{f.disk}, []string{f.img})
	require.NoError(t, err)
	blocks, _, _ := f.changes(9)
	im := newImage(f.disk)
	var refs []blockRef
	for _, b := range blocks {
		copy(im.data[0][int64(b.Block)*undoBS:], b.Data)
		refs = append(refs, blockRef{0, b.Block})
	}
	wire := im.encode(t, refs)
	last := &wire[len(wire)-1]
	last.Hash[0] ^= 1 // the last block fails its check
	h := header(f.dir, "m", SetHome, 0, 7, im)
	h.Force = true
	_, sv, err := restoreTCP(t, s, h, wire)
	require.Error(t, err)
	require.ErrorIs(t, sv.err, ErrHashMismatch)
	require.True(t, bytes.Equal(f.orig, f.guest(t)), "the failed move was rolled back")
	st, err := ReadState(f.setDir())
	require.NoError(t, err)
	require.Zero(t, st.MovingTo)
	_, err = os.Stat(filepath.Join(f.setDir(), UndoLogFile))
	require.ErrorIs(t, err, os.ErrNotExist)

	// The next move applies in full.
	wire[len(wire)-1].Hash[0] ^= 1
	ack, sv, err := restoreTCP(t, s, h, wire)
	require.NoError(t, err)
	require.NoError(t, sv.err)
	require.Equal(t, uint64(7), ack.Cycle)
	require.True(t, bytes.Equal(im.data[0][2*undoBS:14*undoBS], f.guest(t)[2*undoBS:14*undoBS]))
	_, err = os.Stat(filepath.Join(f.setDir(), UndoLogFile))
	require.ErrorIs(t, err, os.ErrNotExist, "a finished move leaves no log")
}

// movedSet adopts a raw home fixture, begins a move to point 7 and writes
// the blocks of changes through the set (each logged first), then closes
// it as a killed agent would leave it: the state says moving, the log is
// there.
func movedSet(t *testing.T, seed uint64) (*homeFixture, []byte) {
	t.Helper()
	f := newHomeFixture(t, "raw", seed)
	s := newTestSite(t)
	ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
	_, err := s.Adopt(context.Background(), ref, []msg.TargetDisk{f.disk}, []string{f.img})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	set, err := OpenDiskSet(f.setDir(), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, set.BeginMove(7, []msg.TargetDisk{f.disk}))
	blocks, want, _ := f.changes(seed)
	for _, b := range blocks {
		require.NoError(t, set.WriteBlock(0, b.Block, b.Data))
	}
	require.NoError(t, set.Close())
	require.True(t, bytes.Equal(want, f.guest(t)))
	return f, want
}

// TestUndoLogTornTail: records past the last complete one (a crash while
// appending, before the fsync that would have let their blocks be
// written) are ignored; the complete ones are rolled back.
func TestUndoLogTornTail(t *testing.T) {
	f, want := movedSet(t, 41)
	log := filepath.Join(f.setDir(), UndoLogFile)
	fi, err := os.Stat(log)
	require.NoError(t, err)
	// Cut the last record (block 41, logged last; its old bytes were a
	// hole, so the record is its header and CRC) in its middle: as if its
	// append was torn and its block never written.
	require.NoError(t, os.Truncate(log, fi.Size()-10))
	last := want[41*undoBS : 42*undoBS]
	set, err := OpenDiskSet(f.setDir(), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, set.Close())
	got := f.guest(t)
	exp := bytes.Clone(f.orig)
	copy(exp[41*undoBS:], last) // the torn record's block stays as it is
	require.True(t, bytes.Equal(exp, got), "every complete record rolled back, the torn one ignored")
}

// TestUndoLogOfAnotherVersionIsRefused: a log this agent cannot read
// stops the open with ErrCorrupt and writes nothing.
func TestUndoLogOfAnotherVersionIsRefused(t *testing.T) {
	f, want := movedSet(t, 42)
	log := filepath.Join(f.setDir(), UndoLogFile)
	b := readFile(t, log)
	h := undoHeader{From: 0, To: 7}.encode()
	h[8] = 2 // version 2
	binary.LittleEndian.PutUint32(h[44:], crc32.Checksum(h[:44], crc32c))
	copy(b, h)
	require.NoError(t, os.WriteFile(log, b, 0o600))
	_, err := OpenDiskSet(f.setDir(), SetOptions{})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), "version 2")
	require.True(t, bytes.Equal(want, f.guest(t)), "nothing rolled back")
	st, err := ReadState(f.setDir())
	require.NoError(t, err)
	require.Equal(t, int64(7), st.MovingTo)
}

// TestUndoLogOfAFinishedMoveIsRemoved: a log left by a move whose state
// already says the new point (a crash between the state and the log's
// removal) is removed, nothing rolled back.
func TestUndoLogOfAFinishedMoveIsRemoved(t *testing.T) {
	f, want := movedSet(t, 43)
	st, err := ReadState(f.setDir())
	require.NoError(t, err)
	st.Point, st.MovingTo, st.Written = 7, 0, false
	require.NoError(t, writeState(f.setDir(), st))
	set, err := OpenDiskSet(f.setDir(), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, set.Close())
	require.True(t, bytes.Equal(want, f.guest(t)), "a finished move is not rolled back")
	_, err = os.Stat(filepath.Join(f.setDir(), UndoLogFile))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// BenchmarkHomeMove: a move into a raw home disk of 256 MiB of random
// data, every block changed (each block's old bytes read and logged, the
// log fsynced once per 16 MiB batch, then the batch written) and every
// block sent with the content it already has (read and hashed, neither
// logged nor written); "staged" is the same stream into a new staged set,
// which keeps no undo log.
//
//	go test -run '^$' -bench HomeMove -benchtime 3x ./agent/apply/
func BenchmarkHomeMove(b *testing.B) {
	const size = 256 << 20
	dir := benchDir(b)
	rnd := func(seed uint64) []byte {
		p := make([]byte, size)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
		}
		return p
	}
	old, img := rnd(1), rnd(2)
	disk := msg.TargetDisk{Name: "sda", Size: size, BlockSize: benchBlockSize}
	stream := func(set string, content []byte) []byte {
		h := msg.RestoreHeader{Ref: msg.TargetRef{Dir: dir, Machine: "bench", Set: set}, To: 1, Create: set != SetHome,
			Force: true, Disks: []msg.TargetDisk{disk}}
		var buf bytes.Buffer
		fw := frame.NewWriter(&buf)
		hb, _ := json.Marshal(h)
		if err := fw.Write(msg.FrameRestoreHeader, hb); err != nil {
			b.Fatal(err)
		}
		blocks := make([]data.Block, 0, size/benchBlockSize)
		for off := 0; off < size; off += benchBlockSize {
			p := content[off : off+benchBlockSize]
			blocks = append(blocks, data.Block{Block: uint64(off / benchBlockSize), Hash: data.Hash(blake3.Sum256(p)), PlainLen: benchBlockSize, Data: p})
		}
		n, err := writeBatches(fw, 1, 0, blocks, benchPerBatch)
		if err != nil {
			b.Fatal(err)
		}
		bar := data.Barrier{Cycle: 1, Seq: n}
		if err := fw.WriteAppend(data.FrameBarrier, bar.Append); err != nil {
			b.Fatal(err)
		}
		if err := fw.Flush(); err != nil {
			b.Fatal(err)
		}
		return buf.Bytes()
	}
	serve := func(site *Site, s []byte) error {
		_, err := site.ServeRestore(context.Background(), struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(s), io.Discard})
		return err
	}
	homeImg := filepath.Join(dir, "home.raw")
	for _, c := range []struct {
		name    string
		content []byte
	}{{"home/all-changed", img}, {"home/unchanged", old}} {
		b.Run(c.name, func(b *testing.B) {
			site, err := NewSite(DefaultConfig())
			if err != nil {
				b.Fatal(err)
			}
			defer site.Close()
			s := stream(SetHome, c.content)
			require.NoError(b, os.WriteFile(homeImg, old, 0o600))
			ref := msg.TargetRef{Dir: dir, Machine: "bench", Set: SetHome}
			_, err = site.Adopt(context.Background(), ref, []msg.TargetDisk{disk}, []string{homeImg})
			require.NoError(b, err)
			defer site.Remove(context.Background(), ref)
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				f, err := os.OpenFile(homeImg, os.O_WRONLY, 0)
				require.NoError(b, err)
				_, err = f.WriteAt(old, 0)
				require.NoError(b, err)
				require.NoError(b, f.Sync())
				require.NoError(b, f.Close())
				b.StartTimer()
				require.NoError(b, serve(site, s))
			}
			b.StopTimer()
			require.True(b, bytes.Equal(c.content, readFile(b, homeImg)), "the home disk holds the move's content")
		})
	}
	b.Run("staged", func(b *testing.B) {
		site, err := NewSite(DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		s := stream(SetStaged, img)
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			require.NoError(b, os.RemoveAll(filepath.Join(dir, "bench", SetStaged)))
			b.StartTimer()
			require.NoError(b, serve(site, s))
		}
	})
}

// childOutput prints a child process's output file when a failure message
// is formatted.
type childOutput string

func (c childOutput) String() string {
	b, err := os.ReadFile(string(c))
	if err != nil {
		return err.Error()
	}
	return string(b)
}
