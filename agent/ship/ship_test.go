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
	}, r.res)
	require.Positive(t, r.res.WireBytes)

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
