package apply

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// twoDisks is a machine with a disk whose size is not a multiple of its
// block size (the last block is partial) and a second, smaller-block disk.
func twoDisks() *image {
	return newImage(
		msg.TargetDisk{Name: "sda", Size: 3<<20 + 12345, BlockSize: 64 << 10},
		msg.TargetDisk{Name: "sdb", Size: 1 << 20, BlockSize: 4 << 10},
	)
}

// mixed fills im with random runs, text runs and zeros.
func mixed(rng *rand.Rand, im *image) {
	for d, dk := range im.disks {
		for off := int64(0); off < dk.Size; {
			n := min(int64(rng.IntN(200<<10)+1), dk.Size-off)
			switch rng.IntN(3) {
			case 0:
				im.fill(rng, d, off, n, false)
			case 1:
				im.fill(rng, d, off, n, true)
			default:
				clear(im.data[d][off : off+n])
			}
			off += n
		}
	}
}

// mutate rewrites a few ranges, zeroing some blocks that held data.
func mutate(rng *rand.Rand, im *image) {
	for d, dk := range im.disks {
		for i := 0; i < 8; i++ {
			off := rng.Int64N(dk.Size)
			n := min(int64(rng.IntN(8<<10)+1), dk.Size-off)
			im.fill(rng, d, off, n, i%2 == 0)
		}
		bs := int64(dk.BlockSize)
		b := rng.Int64N(dk.Size / bs)
		clear(im.data[d][b*bs : (b+1)*bs])
	}
	// The last byte of the partial last block changes too.
	im.data[0][len(im.data[0])-1] ^= 0xff
}

func TestRestoreCreatesThenMovesOnlyWhatDiffers(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	p1 := twoDisks()
	mixed(rng, p1)

	h := header(dir, "web1", SetStaged, 0, 1, p1)
	h.Create = true
	ack, s, err := restoreTCP(t, site, h, p1.encode(t, p1.all()))
	require.NoError(t, err)
	require.NoError(t, s.err)
	require.Equal(t, data.Ack{Cycle: 1, Seq: s.res.Batches}, ack)
	require.True(t, s.res.Created)
	requireContent(t, setPath(dir, "web1", SetStaged), p1)
	st, err := ReadState(setPath(dir, "web1", SetStaged))
	require.NoError(t, err)
	require.Equal(t, msg.DiskSetState{Point: 1, Disks: p1.disks}, st)

	p2 := p1.clone()
	mutate(rng, p2)
	changed := p2.diff(p1)
	require.NotEmpty(t, changed)
	var want int64
	for _, r := range changed {
		bs := int64(p2.disks[r.disk].BlockSize)
		want += min(bs, p2.disks[r.disk].Size-int64(r.block)*bs)
	}
	before := site.BytesWritten()
	ack, s, err = restoreTCP(t, site, header(dir, "web1", SetStaged, 1, 2, p2), p2.encode(t, changed))
	require.NoError(t, err)
	require.NoError(t, s.err)
	require.Equal(t, uint64(2), ack.Cycle)
	requireContent(t, setPath(dir, "web1", SetStaged), p2)
	require.Equal(t, want, site.BytesWritten()-before, "a move rewrites exactly the blocks that differ")
	require.Equal(t, want, s.res.Bytes)
	require.Positive(t, s.res.ZeroBlocks)

	// And back: a move goes backward as well as forward.
	ack, s, err = restoreTCP(t, site, header(dir, "web1", SetStaged, 2, 1, p1), p1.encode(t, p1.diff(p2)))
	require.NoError(t, err)
	require.NoError(t, s.err)
	require.Equal(t, uint64(1), ack.Cycle)
	requireContent(t, setPath(dir, "web1", SetStaged), p1)
}

func TestRestoreRefusals(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	im := twoDisks()
	mixed(rand.New(rand.NewPCG(3, 4)), im)
	h := header(dir, "db", SetStaged, 0, 5, im)
	h.Create = true
	_, _, err := restoreTCP(t, site, h, im.encode(t, im.all()))
	require.NoError(t, err)

	bad := func(mod func(*msg.RestoreHeader)) msg.RestoreHeader {
		h := header(dir, "db", SetStaged, 5, 6, im)
		mod(&h)
		return h
	}
	cases := []struct {
		name string
		h    msg.RestoreHeader
		code protocol.Code
	}{
		{"wrong from", bad(func(h *msg.RestoreHeader) { h.From = 4 }), protocol.CodeFailedPrecondition},
		{"missing set", bad(func(h *msg.RestoreHeader) { h.Ref.Set = SetLive }), protocol.CodeNotFound},
		{"relative dir", bad(func(h *msg.RestoreHeader) { h.Ref.Dir = "targets" }), protocol.CodeInvalid},
		{"dotdot machine", bad(func(h *msg.RestoreHeader) { h.Ref.Machine = ".." }), protocol.CodeInvalid},
		{"slash machine", bad(func(h *msg.RestoreHeader) { h.Ref.Machine = "a/b" }), protocol.CodeInvalid},
		{"unknown set", bad(func(h *msg.RestoreHeader) { h.Ref.Set = "other" }), protocol.CodeInvalid},
		{"dotdot test set", bad(func(h *msg.RestoreHeader) { h.Ref.Set = "test-.." }), protocol.CodeInvalid},
		{"no disks", bad(func(h *msg.RestoreHeader) { h.Disks = nil }), protocol.CodeInvalid},
		{"disk name", bad(func(h *msg.RestoreHeader) { h.Disks[0].Name = "../x" }), protocol.CodeInvalid},
		{"zero to", bad(func(h *msg.RestoreHeader) { h.To = 0 }), protocol.CodeInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, s, err := restoreTCP(t, site, c.h, nil)
			var pe *protocol.Error
			require.ErrorAs(t, err, &pe)
			require.Equal(t, c.code, pe.Code, "%v", pe)
			require.Error(t, s.err)
		})
	}
	// A refused move says what the set holds and leaves it as it was.
	_, _, err = restoreTCP(t, site, bad(func(h *msg.RestoreHeader) { h.From = 4 }), nil)
	require.ErrorContains(t, err, "staged holds point 5")
	st, err := ReadState(setPath(dir, "db", SetStaged))
	require.NoError(t, err)
	require.Equal(t, int64(5), st.Point)
	require.Zero(t, st.MovingTo)
	requireContent(t, setPath(dir, "db", SetStaged), im)
}

func TestRestoreWrongHashWritesNothing(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	im := newImage(msg.TargetDisk{Name: "sda", Size: 1 << 20, BlockSize: 64 << 10})
	rng := rand.New(rand.NewPCG(5, 6))
	im.fill(rng, 0, 0, 1<<20, false)
	blocks := im.encode(t, im.all())
	blocks[7].Hash[0] ^= 1
	h := header(dir, "m", SetStaged, 0, 1, im)
	h.Create = true
	_, s, err := restoreTCP(t, site, h, blocks)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.ErrorIs(t, s.err, ErrHashMismatch)
	require.ErrorContains(t, err, "block 7")

	setDir := setPath(dir, "m", SetStaged)
	st, err := ReadState(setDir)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.MovingTo, "a failed move is recorded as interrupted")
	require.Zero(t, st.Point)
	got := readFile(t, DiskPath(setDir, "sda"))
	require.Equal(t, make([]byte, 64<<10), got[7<<16:8<<16], "the block with the wrong hash was written")
}

func TestRestoreFrameErrors(t *testing.T) {
	im := newImage(msg.TargetDisk{Name: "sda", Size: 256 << 10, BlockSize: 64 << 10})
	im.fill(rand.New(rand.NewPCG(7, 8)), 0, 0, 256<<10, false)
	good := im.encode(t, im.all())
	cases := []struct {
		name string
		send func(fw *frame.Writer, h msg.RestoreHeader) error
	}{
		{"batch out of sequence", func(fw *frame.Writer, h msg.RestoreHeader) error {
			_, err := writeBatches(fw, uint64(h.To), 1, good, 10)
			return err
		}},
		{"batch of another cycle", func(fw *frame.Writer, h msg.RestoreHeader) error {
			_, err := writeBatches(fw, uint64(h.To)+1, 0, good, 10)
			return err
		}},
		{"barrier miscounts", func(fw *frame.Writer, h msg.RestoreHeader) error {
			n, err := writeBatches(fw, uint64(h.To), 0, good, 1)
			if err != nil {
				return err
			}
			b := data.Barrier{Cycle: uint64(h.To), Seq: n - 1}
			return fw.WriteAppend(data.FrameBarrier, b.Append)
		}},
		{"a patch", func(fw *frame.Writer, h msg.RestoreHeader) error {
			blocks := append([]data.Block(nil), good...)
			blocks[1].Flags |= data.FlagPatch
			_, err := writeBatches(fw, uint64(h.To), 0, blocks, 10)
			return err
		}},
		{"block past the end", func(fw *frame.Writer, h msg.RestoreHeader) error {
			blocks := append([]data.Block(nil), good...)
			blocks[0].Block = 4
			_, err := writeBatches(fw, uint64(h.To), 0, blocks, 10)
			return err
		}},
		{"short block", func(fw *frame.Writer, h msg.RestoreHeader) error {
			b := data.Block{Block: 1, PlainLen: 512, Data: make([]byte, 512)}
			_, err := writeBatches(fw, uint64(h.To), 0, []data.Block{b}, 10)
			return err
		}},
		{"unknown disk", func(fw *frame.Writer, h msg.RestoreHeader) error {
			blocks := append([]data.Block(nil), good...)
			blocks[2].Disk = 1
			_, err := writeBatches(fw, uint64(h.To), 0, blocks, 10)
			return err
		}},
		{"unexpected frame", func(fw *frame.Writer, h msg.RestoreHeader) error {
			ack := data.Ack{Cycle: 1}
			return fw.WriteAppend(data.FrameAck, ack.Append)
		}},
		{"malformed batch", func(fw *frame.Writer, h msg.RestoreHeader) error {
			return fw.Write(data.FrameBatch, []byte{1, 2, 3})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			site := newTestSite(t)
			h := header(t.TempDir(), "m", SetStaged, 0, 3, im)
			h.Create = true
			ctrl, done := serveTCP(t, site)
			fw := frame.NewWriter(ctrl)
			hb, err := json.Marshal(h)
			require.NoError(t, err)
			require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
			require.NoError(t, c.send(fw, h))
			require.NoError(t, fw.Flush())
			_, err = readReply(ctrl)
			require.ErrorIs(t, err, protocol.ErrInvalid)
			s := wait(t, done)
			require.ErrorIs(t, s.err, protocol.ErrInvalid)
			require.NotErrorIs(t, s.err, ErrHashMismatch)
			st, err := ReadState(setPath(h.Ref.Dir, "m", SetStaged))
			require.NoError(t, err)
			require.Equal(t, int64(3), st.MovingTo, "nothing recorded as done")
		})
	}
}

func TestRestoreResumesAnInterruptedMove(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(9, 10))
	p1 := twoDisks()
	mixed(rng, p1)
	h := header(dir, "app", SetStaged, 0, 1, p1)
	h.Create = true
	_, _, err := restoreTCP(t, site, h, p1.encode(t, p1.all()))
	require.NoError(t, err)

	// The move to 2 is cut after a few batches: the connection closes.
	p2 := p1.clone()
	mutate(rng, p2)
	mutate(rng, p2)
	blocks := p2.encode(t, p2.diff(p1))
	require.Greater(t, len(blocks), 6)
	ctrl, done := serveTCP(t, site)
	fw := frame.NewWriter(ctrl)
	hb, err := json.Marshal(header(dir, "app", SetStaged, 1, 2, p2))
	require.NoError(t, err)
	require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
	_, err = writeBatches(fw, 2, 0, blocks[:len(blocks)/2], 2)
	require.NoError(t, err)
	require.NoError(t, ctrl.(interface{ CloseWrite() error }).CloseWrite())
	s := wait(t, done)
	require.ErrorIs(t, s.err, io.ErrUnexpectedEOF)
	st, err := ReadState(setPath(dir, "app", SetStaged))
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Point)
	require.Equal(t, int64(2), st.MovingTo)

	// A move to another point from the set's point is refused: the set is
	// between 1 and 2.
	_, _, err = restoreTCP(t, site, header(dir, "app", SetStaged, 1, 3, p2), nil)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	require.ErrorContains(t, err, "between points 1 and 2")

	// Resending the move 1 → 2 whole is a resume.
	_, _, err = restoreTCP(t, site, header(dir, "app", SetStaged, 1, 2, p2), blocks)
	require.NoError(t, err)
	requireContent(t, setPath(dir, "app", SetStaged), p2)

	// A retry of the same move after a lost ack is accepted too.
	_, _, err = restoreTCP(t, site, header(dir, "app", SetStaged, 1, 2, p2), blocks)
	require.NoError(t, err)
	requireContent(t, setPath(dir, "app", SetStaged), p2)
}

func TestRestoreOnWrittenSetNeedsForce(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(11, 12))
	p1 := twoDisks()
	mixed(rng, p1)
	h := header(dir, "vm", SetStaged, 0, 1, p1)
	h.Create = true
	_, _, err := restoreTCP(t, site, h, p1.encode(t, p1.all()))
	require.NoError(t, err)
	ref := msg.TargetRef{Dir: dir, Machine: "vm", Set: SetStaged}
	require.NoError(t, site.MarkWritten(t.Context(), ref))

	// The machine's own writes.
	written := p1.clone()
	written.fill(rng, 1, 0, 100<<10, false)
	writeAt(t, DiskPath(setPath(dir, "vm", SetStaged), "sdb"), written.data[1][:100<<10], 0)

	p2 := p1.clone()
	mutate(rng, p2)
	_, _, err = restoreTCP(t, site, header(dir, "vm", SetStaged, 1, 2, p2), p2.encode(t, p2.diff(p1)))
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	require.ErrorContains(t, err, "written")

	// Forced, with every block that may differ (here, all of them).
	h = header(dir, "vm", SetStaged, 1, 2, p2)
	h.Force = true
	_, _, err = restoreTCP(t, site, h, p2.encode(t, p2.all()))
	require.NoError(t, err)
	requireContent(t, setPath(dir, "vm", SetStaged), p2)
	st, err := ReadState(setPath(dir, "vm", SetStaged))
	require.NoError(t, err)
	require.Equal(t, msg.DiskSetState{Point: 2, Disks: p2.disks}, st)
}

func TestRestoreResizesDisks(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(13, 14))
	p1 := twoDisks()
	mixed(rng, p1)
	h := header(dir, "r", SetStaged, 0, 1, p1)
	h.Create = true
	_, _, err := restoreTCP(t, site, h, p1.encode(t, p1.all()))
	require.NoError(t, err)

	// sda shrinks to a partial block, sdb grows, sdb... and a new sdc appears.
	p2 := newImage(
		msg.TargetDisk{Name: "sda", Size: 2<<20 + 777, BlockSize: 64 << 10},
		msg.TargetDisk{Name: "sdb", Size: 3 << 20, BlockSize: 4 << 10},
		msg.TargetDisk{Name: "sdc", Size: 512 << 10, BlockSize: 64 << 10},
	)
	copy(p2.data[0], p1.data[0])
	copy(p2.data[1], p1.data[1])
	p2.fill(rng, 1, 2<<20, 4096, false)
	p2.fill(rng, 2, 0, 512<<10, true)
	// Blocks that differ: the new last block of sda (cut), sdb's new data,
	// all of sdc.
	old := p1.clone()
	old.disks[0].Size = p2.disks[0].Size
	old.data[0] = old.data[0][:p2.disks[0].Size]
	_, _, err = restoreTCP(t, site, header(dir, "r", SetStaged, 1, 2, p2), p2.encode(t, p2.diff(old)))
	require.NoError(t, err)
	requireContent(t, setPath(dir, "r", SetStaged), p2)

	// Dropping a disk deletes its file at the end of the move.
	p3 := p2.clone()
	p3.disks, p3.data = p3.disks[:2], p3.data[:2]
	_, _, err = restoreTCP(t, site, header(dir, "r", SetStaged, 2, 3, p3), nil)
	require.NoError(t, err)
	requireContent(t, setPath(dir, "r", SetStaged), p3)
	require.NoFileExists(t, DiskPath(setPath(dir, "r", SetStaged), "sdc"))
}

// TestResetMoveLeavesOnlyThePoint: a forced move from nothing (Reset) of a
// set that holds other data — the machine wrote to it — sends only the
// point's non-zero blocks; afterwards the set equals the point exactly,
// including the blocks the point has as zeros.
func TestResetMoveLeavesOnlyThePoint(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(8, 8))
	written := twoDisks()
	mixed(rng, written)
	staged(t, site, dir, "m", 2, written)

	want := twoDisks()
	mixed(rng, want)
	var nonZero []blockRef
	for _, r := range want.all() {
		if !isZeroBlock(want.block(r.disk, r.block)) {
			nonZero = append(nonZero, r)
		}
	}
	h := header(dir, "m", SetStaged, 0, 3, want)
	h.Force, h.Reset = true, true
	_, s, err := restoreTCP(t, site, h, want.encode(t, nonZero))
	require.NoError(t, err)
	require.NoError(t, s.err)
	requireContent(t, setPath(dir, "m", SetStaged), want)
}

func isZeroBlock(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
