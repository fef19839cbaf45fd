package ship_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"iter"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// These tests run ship.Run against a controller side the test drives by
// hand over a real yamux session on loopback TLS: it answers manifests,
// checks every block against the disk bytes the test wrote, and can
// refuse, lie or cut the stream.

const (
	blockSize = 4096
	nblocks   = 16
	diskSize  = nblocks * blockSize
	cycleID   = 42
)

// link is one session: the agent's end (which ship opens data streams on)
// and the controller's end (where the test accepts them).
type link struct {
	agent, ctrl *session.Session
}

func newLink(t *testing.T) *link {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ca, err := testpki.NewCA("ship test CA", time.Now())
	require.NoError(t, err)
	srvCert, err := ca.Server()
	require.NoError(t, err)
	cliCert, err := ca.Client("agent-1")
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ca.ServerConfig(srvCert))
	require.NoError(t, err)
	ctrlCh := make(chan *session.Session, 1)
	go func() {
		defer close(ctrlCh)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := session.DefaultConfig()
		cfg.Name = "controller"
		if s, err := session.Server(ctx, conn.(*tls.Conn), cfg); err == nil {
			ctrlCh <- s
		}
	}()
	acfg := session.DefaultConfig()
	acfg.Name = "agent"
	acfg.TLS = ca.ClientConfig(&cliCert)
	l := &link{}
	l.agent, err = session.Dial(ctx, ln.Addr().String(), acfg)
	require.NoError(t, err)
	l.ctrl = <-ctrlCh
	require.NotNil(t, l.ctrl)
	t.Cleanup(func() {
		cancel()
		l.agent.Close()
		l.ctrl.Close()
		ln.Close()
	})
	return l
}

// disk is the test's source disk and the agent's block map of it.
type disk struct {
	bytes []byte
	m     *blockmap.Map
}

func newDisk(t *testing.T) *disk {
	t.Helper()
	b := make([]byte, diskSize)
	for blk := range nblocks {
		if blk%4 == 3 {
			continue // every fourth block stays zero
		}
		for i := range blockSize {
			b[blk*blockSize+i] = byte(blk*31 + i*7 + i/253)
		}
	}
	m, trusted, err := blockmap.Open(filepath.Join(t.TempDir(), "map"), blockSize, diskSize, "boot")
	require.NoError(t, err)
	require.True(t, trusted)
	t.Cleanup(func() { m.Close() })
	return &disk{bytes: b, m: m}
}

func allBlocks() iter.Seq[ship.Candidate] {
	return func(yield func(ship.Candidate) bool) {
		for b := range int64(nblocks) {
			if !yield(ship.Candidate{Block: b}) {
				return
			}
		}
	}
}

func config(t *testing.T, l *link, d *disk, r io.ReaderAt) ship.Config {
	t.Helper()
	zc, err := data.NewCompressor(1)
	require.NoError(t, err)
	t.Cleanup(func() { zc.Close() })
	return ship.Config{
		Cycle: cycleID,
		Disks: []ship.Disk{{Index: 0, Reader: r, Size: diskSize, BlockSize: blockSize, Map: d.m, Candidates: allBlocks()}},
		Open: func(ctx context.Context) (io.ReadWriteCloser, error) {
			return l.agent.Open(ctx, protocol.KindData)
		},
		Streams: 1, Hashers: 2, Compressor: zc,
	}
}

// ctrlStream is the controller's end of one data stream.
type ctrlStream struct {
	t   *testing.T
	st  *session.Stream
	fr  *frame.Reader
	fw  *frame.Writer
	dec *data.Decompressor
}

func (l *link) accept(t *testing.T) *ctrlStream {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := l.ctrl.Accept(ctx)
	if err != nil {
		t.Errorf("accept a data stream: %v", err)
		return nil
	}
	dec, err := data.NewDecompressor(1)
	if err != nil {
		t.Error(err)
		return nil
	}
	t.Cleanup(dec.Close)
	return &ctrlStream{t: t, st: st, fr: frame.NewReader(st, data.MaxFrameSize), fw: frame.NewWriter(st), dec: dec}
}

func (c *ctrlStream) send(typ uint8, m interface{ Append([]byte) []byte }) error {
	if err := c.fw.WriteAppend(typ, m.Append); err != nil {
		return err
	}
	return c.fw.Flush()
}

// serve plays an honest controller that already holds the blocks in have
// (by hash): it answers each manifest part, checks every block of each
// batch against want, and acknowledges it. It returns what it received.
func (c *ctrlStream) serve(want []byte, have map[data.Hash]bool) (map[uint64][]byte, error) {
	got := map[uint64][]byte{}
	for {
		typ, p, err := c.fr.Next()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		switch typ {
		case data.FrameManifest:
			var m data.Manifest
			if err := m.Decode(p); err != nil {
				return got, err
			}
			if m.Cycle != cycleID {
				return got, fmt.Errorf("manifest of cycle %d", m.Cycle)
			}
			n := &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
			for i, e := range m.Entries {
				blk := want[e.Block*blockSize : (e.Block+1)*blockSize]
				if e.Flags&data.FlagZero != 0 {
					if !blockmap.IsZero(blk) {
						return got, fmt.Errorf("block %d announced zero", e.Block)
					}
					got[e.Block] = make([]byte, blockSize)
					continue
				}
				if e.Hash != data.Hash(blake3.Sum256(blk)) {
					return got, fmt.Errorf("block %d announced with a wrong hash", e.Block)
				}
				n.Need[i] = !have[e.Hash]
				if !n.Need[i] {
					got[e.Block] = blk
				}
			}
			if err := c.send(data.FrameNeed, n); err != nil {
				return got, err
			}
		case data.FrameBatch:
			var b data.Batch
			if err := b.Decode(p); err != nil {
				return got, err
			}
			for _, blk := range b.Blocks {
				plain, err := c.dec.Plain(nil, &blk)
				if err != nil {
					return got, err
				}
				if data.Hash(blake3.Sum256(plain)) != blk.Hash {
					return got, fmt.Errorf("block %d: data does not match its hash", blk.Block)
				}
				got[blk.Block] = plain
			}
			if err := c.send(data.FrameAck, &data.Ack{Cycle: b.Cycle, Seq: b.Seq}); err != nil {
				return got, err
			}
		default:
			return got, fmt.Errorf("unexpected frame type %d", typ)
		}
	}
}

// run starts ship.Run and returns its result when it ends.
// needAll plays the controller for n blocks: every manifest entry is
// needed, each batch block is handed to each (its Data copied) and the
// batch acknowledged.
func (c *ctrlStream) needAll(t *testing.T, n int, each func(blk data.Block)) {
	t.Helper()
	for got := 0; got < n; {
		typ, p, err := c.fr.Next()
		require.NoError(t, err)
		switch typ {
		case data.FrameManifest:
			var m data.Manifest
			require.NoError(t, m.Decode(p))
			need := &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
			for i := range need.Need {
				need.Need[i] = true
			}
			require.NoError(t, c.send(data.FrameNeed, need))
		case data.FrameBatch:
			var b data.Batch
			require.NoError(t, b.Decode(p))
			for _, blk := range b.Blocks {
				blk.Data = append([]byte(nil), blk.Data...)
				each(blk)
				got++
			}
			require.NoError(t, c.send(data.FrameAck, &data.Ack{Cycle: b.Cycle, Seq: b.Seq}))
		default:
			t.Fatalf("unexpected frame type %d", typ)
		}
	}
}

// bigDisk is a disk of n blocks whose byte i is fill(i), an empty map of
// it and a compressor, closed when the test ends.
func bigDisk(t *testing.T, n int, fill func(i int) byte) ([]byte, *blockmap.Map, *data.Compressor) {
	t.Helper()
	b := make([]byte, n*blockSize)
	for i := range b {
		b[i] = fill(i)
	}
	m, _, err := blockmap.Open(filepath.Join(t.TempDir(), "map"), blockSize, int64(len(b)), "boot")
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	zc, err := data.NewCompressor(1)
	require.NoError(t, err)
	t.Cleanup(func() { zc.Close() })
	return b, m, zc
}

func run(cfg ship.Config) <-chan struct {
	res ship.Result
	err error
} {
	out := make(chan struct {
		res ship.Result
		err error
	}, 1)
	go func() {
		res, err := ship.Run(context.Background(), cfg)
		out <- struct {
			res ship.Result
			err error
		}{res, err}
	}()
	return out
}

func wait[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("ship.Run did not return")
		var zero T
		return zero
	}
}

// TestShipSendsChangedBlocksAndRecordsAcks: every block reaches the
// controller with its bytes and hash, zero blocks as zero entries, blocks
// the controller holds are not sent; the map records each block once
// acknowledged, and a second cycle over the same disk sends nothing.
func TestShipSendsChangedBlocksAndRecordsAcks(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	have := map[data.Hash]bool{data.Hash(blake3.Sum256(d.bytes[5*blockSize : 6*blockSize])): true}
	// The map believes block 3 (zero on disk) holds something else: it
	// travels as a zero entry. The other zero blocks are unchanged.
	require.NoError(t, d.m.Set(blockmap.Entry{Block: 3, Hash: blockmap.Unknown}))
	done := run(config(t, l, d, bytes.NewReader(d.bytes)))
	c := l.accept(t)
	require.NotNil(t, c)
	got, err := c.serve(d.bytes, have)
	require.NoError(t, err)
	r := wait(t, done)
	require.NoError(t, r.err)
	for b := range int64(nblocks) {
		blk := d.bytes[b*blockSize : (b+1)*blockSize]
		if g, ok := got[uint64(b)]; ok || !blockmap.IsZero(blk) {
			require.True(t, bytes.Equal(blk, g), "block %d differs at the controller", b)
		}
		require.Equal(t, blockmap.Sum(d.bytes[b*blockSize:(b+1)*blockSize]), d.m.Get(b), "map entry of block %d", b)
	}
	require.Equal(t, ship.Result{
		Parts: 1, Entries: nblocks - 3, Scanned: nblocks, Unchanged: 3, Zero: 1,
		Sent: nblocks - nblocks/4 - 1, Deduped: 1, WireBytes: r.res.WireBytes,
		Codec: "zstd", CodecBytes: r.res.CodecBytes, // a controller that offers no S2
	}, r.res)
	require.Positive(t, r.res.WireBytes)
	require.Positive(t, r.res.CodecBytes.Zstd)
	require.Zero(t, r.res.CodecBytes.S2)

	// Same disk again: nothing changed, nothing is sent, no stream opened.
	r2 := wait(t, run(config(t, l, d, bytes.NewReader(d.bytes))))
	require.NoError(t, r2.err)
	require.Equal(t, int64(nblocks), r2.res.Unchanged)
	require.Zero(t, r2.res.Sent)
	require.Zero(t, r2.res.WireBytes)
}

// TestShipControllerRefusal: an error frame from the controller ends the
// cycle with that code, and blocks not acknowledged stay out of the map.
func TestShipControllerRefusal(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	done := run(config(t, l, d, bytes.NewReader(d.bytes)))
	c := l.accept(t)
	require.NotNil(t, c)
	typ, p, err := c.fr.Next()
	require.NoError(t, err)
	require.Equal(t, uint8(data.FrameManifest), typ)
	var m data.Manifest
	require.NoError(t, m.Decode(p))
	n := &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
	for i := range n.Need {
		n.Need[i] = m.Entries[i].Flags&data.FlagZero == 0
	}
	require.NoError(t, c.send(data.FrameNeed, n))
	typ, _, err = c.fr.Next()
	require.NoError(t, err)
	require.Equal(t, uint8(data.FrameBatch), typ)
	require.NoError(t, c.fw.WriteError(protocol.Errorf(protocol.CodeFailedPrecondition, "patch base differs")))
	require.NoError(t, c.fw.Flush())
	r := wait(t, done)
	require.ErrorIs(t, r.err, protocol.ErrFailedPrecondition)
	for b := range int64(nblocks) {
		if !blockmap.IsZero(d.bytes[b*blockSize : (b+1)*blockSize]) {
			require.Equal(t, blockmap.ZeroHash, d.m.Get(b), "block %d recorded without an ack", b)
		}
	}
}

// TestShipMalformedReplies: a reply that does not fit what was sent ends
// the cycle with ErrInvalid (not a hang, not success), and nothing sent is
// recorded.
func TestShipMalformedReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(c *ctrlStream, m *data.Manifest) error
	}{
		{"need for another part", func(c *ctrlStream, m *data.Manifest) error {
			return c.send(data.FrameNeed, &data.Need{Cycle: m.Cycle, Part: m.Part + 1, Need: make([]bool, len(m.Entries))})
		}},
		{"need of another length", func(c *ctrlStream, m *data.Manifest) error {
			return c.send(data.FrameNeed, &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries)+1)})
		}},
		{"ack of a batch never sent", func(c *ctrlStream, m *data.Manifest) error {
			return c.send(data.FrameAck, &data.Ack{Cycle: m.Cycle, Seq: 999})
		}},
		{"unknown frame type", func(c *ctrlStream, _ *data.Manifest) error {
			_, err := c.st.Write(frame.Append(nil, 77, []byte{1, 2, 3}))
			return err
		}},
		{"truncated need", func(c *ctrlStream, m *data.Manifest) error {
			p := (&data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}).Append(nil)
			_, err := c.st.Write(frame.Append(nil, data.FrameNeed, p[:4]))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLink(t)
			d := newDisk(t)
			done := run(config(t, l, d, bytes.NewReader(d.bytes)))
			c := l.accept(t)
			require.NotNil(t, c)
			typ, p, err := c.fr.Next()
			require.NoError(t, err)
			require.Equal(t, uint8(data.FrameManifest), typ)
			var m data.Manifest
			require.NoError(t, m.Decode(p))
			require.NoError(t, tc.reply(c, &m))
			r := wait(t, done)
			require.ErrorIs(t, r.err, protocol.ErrInvalid, "%v", r.err)
			for b := range int64(nblocks) {
				require.Equal(t, blockmap.ZeroHash, d.m.Get(b), "block %d recorded", b)
			}
		})
	}
}

// TestShipCutStream: a data stream the controller closes after its Need,
// before acknowledging the batch, ends the cycle with a retryable
// unavailable error and records nothing of the batch.
func TestShipCutStream(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	done := run(config(t, l, d, bytes.NewReader(d.bytes)))
	c := l.accept(t)
	require.NotNil(t, c)
	typ, p, err := c.fr.Next()
	require.NoError(t, err)
	require.Equal(t, uint8(data.FrameManifest), typ)
	var m data.Manifest
	require.NoError(t, m.Decode(p))
	n := &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
	for i := range n.Need {
		n.Need[i] = m.Entries[i].Flags&data.FlagZero == 0
	}
	require.NoError(t, c.send(data.FrameNeed, n))
	typ, _, err = c.fr.Next()
	require.NoError(t, err)
	require.Equal(t, uint8(data.FrameBatch), typ)
	require.NoError(t, c.st.Close()) // the cut
	r := wait(t, done)
	require.ErrorIs(t, r.err, protocol.ErrUnavailable, "%v", r.err)
	require.True(t, protocol.Retryable(r.err))
	for b := range int64(nblocks) {
		if !blockmap.IsZero(d.bytes[b*blockSize : (b+1)*blockSize]) {
			require.Equal(t, blockmap.ZeroHash, d.m.Get(b), "block %d recorded without an ack", b)
		}
	}
}

// TestShipSessionLost: the whole session dying mid-cycle ends Run with a
// retryable error instead of hanging.
func TestShipSessionLost(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	done := run(config(t, l, d, bytes.NewReader(d.bytes)))
	c := l.accept(t)
	require.NotNil(t, c)
	_, _, err := c.fr.Next()
	require.NoError(t, err)
	require.NoError(t, l.ctrl.Close())
	r := wait(t, done)
	require.ErrorIs(t, r.err, protocol.ErrUnavailable, "%v", r.err)
}

// failingReader fails reads from one offset on.
type failingReader struct {
	r   io.ReaderAt
	at  int64
	err error
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.at {
		return 0, f.err
	}
	return f.r.ReadAt(p, off)
}

// TestShipReadError: a disk read error ends the cycle with that error.
func TestShipReadError(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	errDisk := errors.New("disk gone")
	cfg := config(t, l, d, failingReader{r: bytes.NewReader(d.bytes), at: 6 * blockSize, err: errDisk})
	done := run(cfg)
	go func() {
		// Serve honestly whatever arrives before the failure.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := l.ctrl.Accept(ctx)
		if err != nil {
			return
		}
		dec, err := data.NewDecompressor(1)
		if err != nil {
			return
		}
		defer dec.Close()
		c := &ctrlStream{st: st, fr: frame.NewReader(st, data.MaxFrameSize), fw: frame.NewWriter(st), dec: dec}
		_, _ = c.serve(d.bytes, nil)
	}()
	r := wait(t, done)
	require.ErrorIs(t, r.err, errDisk)
}

// TestShipPatches: with patches allowed and the changed ranges known, a
// block whose map entry is not zero travels as a patch of those ranges;
// applied to the controller's copy of the old block it gives the new
// block's hash. Without known ranges the whole block travels.
func TestShipPatches(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	old := append([]byte(nil), d.bytes...)
	// The map matches the old disk, then blocks 1 and 2 change in 300 bytes.
	for b := range int64(nblocks) {
		require.NoError(t, d.m.Set(blockmap.Entry{Block: b, Hash: blockmap.Sum(old[b*blockSize : (b+1)*blockSize])}))
	}
	for _, b := range []int{1, 2} {
		copy(d.bytes[b*blockSize+512:], bytes.Repeat([]byte{0xee}, 300))
	}
	cfg := config(t, l, d, bytes.NewReader(d.bytes))
	cfg.Patches = true
	cfg.Disks[0].Candidates = func(yield func(ship.Candidate) bool) {
		if yield(ship.Candidate{Block: 1, Ranges: []ship.Range{{Offset: 512, Length: 300}}}) {
			yield(ship.Candidate{Block: 2}) // ranges unknown
		}
	}
	done := run(cfg)
	c := l.accept(t)
	require.NotNil(t, c)
	got := map[uint64]data.Block{}
	c.needAll(t, 2, func(blk data.Block) { got[blk.Block] = blk })
	r := wait(t, done)
	require.NoError(t, r.err)
	require.Equal(t, int64(1), r.res.Patches)
	require.Equal(t, int64(2), r.res.Sent)

	p1 := got[1]
	require.Equal(t, data.FlagPatch, p1.Flags&data.FlagPatch, "block 1 did not travel as a patch")
	plain, err := c.dec.Plain(nil, &p1)
	require.NoError(t, err)
	runs, err := data.DecodePatch(plain)
	require.NoError(t, err)
	patched := append([]byte(nil), old[blockSize:2*blockSize]...)
	require.NoError(t, data.ApplyPatch(patched, runs))
	require.True(t, bytes.Equal(d.bytes[blockSize:2*blockSize], patched), "the patch does not turn the old block into the new one")
	require.Equal(t, data.Hash(blake3.Sum256(patched)), p1.Hash)

	p2 := got[2]
	require.Zero(t, p2.Flags&data.FlagPatch, "block 2 (ranges unknown) travelled as a patch")
	whole, err := c.dec.Plain(nil, &p2)
	require.NoError(t, err)
	require.True(t, bytes.Equal(d.bytes[2*blockSize:3*blockSize], whole))
	for _, b := range []int64{1, 2} {
		require.Equal(t, blockmap.Sum(d.bytes[b*blockSize:(b+1)*blockSize]), d.m.Get(b))
	}
}

// TestShipManyPartsOverTwoStreams: a disk large enough for several
// manifest parts is shipped over two data streams; every block arrives
// exactly once with its bytes, whichever stream carried it.
func TestShipManyPartsOverTwoStreams(t *testing.T) {
	l := newLink(t)
	const big = 1500 // blocks: three parts of at most 2 MiB
	b, m, zc := bigDisk(t, big, func(i int) byte { return byte(i*13 + i/4093) })
	cfg := ship.Config{
		Cycle: cycleID,
		Disks: []ship.Disk{{Index: 0, Reader: bytes.NewReader(b), Size: int64(len(b)), BlockSize: blockSize, Map: m,
			Candidates: func(yield func(ship.Candidate) bool) {
				for i := range int64(big) {
					if !yield(ship.Candidate{Block: i}) {
						return
					}
				}
			}}},
		Open:    func(ctx context.Context) (io.ReadWriteCloser, error) { return l.agent.Open(ctx, protocol.KindData) },
		Streams: 2, Compressor: zc,
	}
	done := run(cfg)
	type served struct {
		got map[uint64][]byte
		err error
	}
	results := make(chan served, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := 0
	go func() {
		for {
			st, err := l.ctrl.Accept(ctx)
			if err != nil {
				return
			}
			dec, err := data.NewDecompressor(1)
			if err != nil {
				results <- served{err: err}
				return
			}
			go func() {
				defer dec.Close()
				c := &ctrlStream{st: st, fr: frame.NewReader(st, data.MaxFrameSize), fw: frame.NewWriter(st), dec: dec}
				got, err := c.serve(b, nil)
				results <- served{got, err}
			}()
		}
	}()
	r := wait(t, done)
	require.NoError(t, r.err)
	require.Equal(t, uint32(3), r.res.Parts)
	all := map[uint64][]byte{}
	// Every stream ship opened ends (EOF) after Run returned.
	for len(all) < big {
		select {
		case s := <-results:
			require.NoError(t, s.err)
			streams++
			for k, v := range s.got {
				_, dup := all[k]
				require.False(t, dup, "block %d arrived twice", k)
				all[k] = v
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d blocks arrived over %d streams", len(all), big, streams)
		}
	}
	for i := range uint64(big) {
		require.True(t, bytes.Equal(b[i*blockSize:(i+1)*blockSize], all[i]), "block %d", i)
	}
	t.Logf("%d blocks over %d streams in %d parts", big, streams, r.res.Parts)
}

// TestShipProgressCountsEveryCandidate: Progress is told the bytes of every
// candidate compared — changed, unchanged and zero alike — and the last
// block of a disk whose size is not a whole number of blocks counts its
// real length, so the sum is the disk's size.
func TestShipProgressCountsEveryCandidate(t *testing.T) {
	l := newLink(t)
	d := newDisk(t)
	cfg := config(t, l, d, bytes.NewReader(d.bytes))
	const short = diskSize - 100
	cfg.Disks[0].Size = short
	var done atomic.Int64
	calls := atomic.Int64{}
	cfg.Progress = func(n int64) { done.Add(n); calls.Add(1) }
	res := run(cfg)
	c := l.accept(t)
	require.NotNil(t, c)
	_, err := c.serve(d.bytes, nil)
	require.NoError(t, err)
	r := wait(t, res)
	require.NoError(t, r.err)
	require.Equal(t, int64(short), done.Load())
	require.Equal(t, int64(nblocks), calls.Load(), "one call per candidate")
}

// TestShipPatchPartsCountWhatTravels: a cycle of small changes in many
// blocks, sent as patches, goes in one manifest part (a part counts a
// patch's bytes, at least an eighth of a block), where whole blocks of the
// same count take three; each patch turns the old block into the new one.
func TestShipPatchPartsCountWhatTravels(t *testing.T) {
	const big = 1500 // 1500 × 4 KiB whole: three parts of 2 MiB; as patches: one
	l := newLink(t)
	old, m, zc := bigDisk(t, big, func(i int) byte { return byte(i*7 + i/4091) })
	for b := range int64(big) {
		require.NoError(t, m.Set(blockmap.Entry{Block: b, Hash: blockmap.Sum(old[b*blockSize : (b+1)*blockSize])}))
	}
	cur := append([]byte(nil), old...)
	for b := range big {
		copy(cur[b*blockSize+100:], bytes.Repeat([]byte{byte(b) | 1}, 64))
	}
	cfg := ship.Config{
		Cycle: cycleID, Patches: true, Streams: 1, Compressor: zc,
		Disks: []ship.Disk{{Index: 0, Reader: bytes.NewReader(cur), Size: int64(len(cur)), BlockSize: blockSize, Map: m,
			Candidates: func(yield func(ship.Candidate) bool) {
				for b := range int64(big) {
					if !yield(ship.Candidate{Block: b, Ranges: []ship.Range{{Offset: 100, Length: 64}}}) {
						return
					}
				}
			}}},
		Open: func(ctx context.Context) (io.ReadWriteCloser, error) { return l.agent.Open(ctx, protocol.KindData) },
	}
	done := run(cfg)
	c := l.accept(t)
	require.NotNil(t, c)
	c.needAll(t, big, func(blk data.Block) {
		require.Equal(t, data.FlagPatch, blk.Flags&data.FlagPatch, "block %d travelled whole", blk.Block)
		plain, err := c.dec.Plain(nil, &blk)
		require.NoError(t, err)
		runs, err := data.DecodePatch(plain)
		require.NoError(t, err)
		o := blk.Block * blockSize
		patched := append([]byte(nil), old[o:o+blockSize]...)
		require.NoError(t, data.ApplyPatch(patched, runs))
		require.True(t, bytes.Equal(cur[o:o+blockSize], patched), "block %d", blk.Block)
		require.Equal(t, data.Hash(blake3.Sum256(patched)), blk.Hash)
	})
	r := wait(t, done)
	require.NoError(t, r.err)
	require.Equal(t, int64(big), r.res.Patches)
	require.Equal(t, uint32(1), r.res.Parts, "a part of patches should count what travels")
}
