package ingest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/controller/ingest"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
	"github.com/ferrydr/ferry/storage"
)

// These tests drive the controller's side of a cycle by hand: a real
// repository in a temp dir, a real yamux session over loopback TLS, and an
// agent side that writes the frames itself (so it can also write wrong
// ones, cut them, or lie about hashes).

const (
	agentID   = "agent-1"
	machine   = "vm1"
	blockSize = 4096
	diskSize  = 8 * blockSize
)

type tLog struct{ t testing.TB }

func (w tLog) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// rig is one test's controller side: repository, ingest and a session
// whose data streams it serves.
type rig struct {
	t     *testing.T
	repo  *storage.Repo
	ing   *ingest.Ingest
	agent *session.Session
	// served receives ServeData's result for each data stream, in the
	// order the streams end.
	served chan error
	points chan storage.Point
	// notes receives what RecordNote was given, with the points OnCommit
	// had been told of by then.
	notes chan recordedNote
	// streamAgent is the agent the controller side serves the next data
	// streams for (the session's identity); agentID unless a test says.
	streamAgent atomic.Value
}

func newRig(t *testing.T) *rig { return newRigWithKey(t, nil) }

// newRigWithKey makes the rig's repository encrypted to key's public half
// when key is set; the repository is opened with key, so the test can read
// plaintext back.
func newRigWithKey(t *testing.T, key *storage.PrivateKey) *rig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(tLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	dir := t.TempDir()
	create := storage.CreateOptions{PackSize: storage.MinPackSize}
	if key != nil {
		create.PublicKey = key.Public()
	}
	require.NoError(t, storage.Create(ctx, dir, create))
	repo, err := storage.Open(ctx, dir, storage.OpenOptions{Logger: log, PrivateKey: key})
	require.NoError(t, err)
	r := &rig{t: t, repo: repo, served: make(chan error, 16), points: make(chan storage.Point, 16), notes: make(chan recordedNote, 16)}
	r.streamAgent.Store(agentID)
	r.ing, err = ingest.New(ingest.Config{Repo: repo, Log: log, CanPatch: true,
		OnCommit: func(_ string, p storage.Point) { r.points <- p },
		RecordNote: func(_ context.Context, m string, point int64, method, reason string) error {
			pts, err := r.repo.Points(context.Background(), m)
			require.NoError(t, err)
			listed := 0
			for _, p := range pts {
				if p.ID == point {
					listed++
				}
			}
			r.notes <- recordedNote{machine: m, point: point, method: method, reason: reason, committed: len(r.points), listed: listed}
			return nil
		}})
	require.NoError(t, err)

	ca, err := testpki.NewCA("ingest test CA", time.Now())
	require.NoError(t, err)
	srvCert, err := ca.Server()
	require.NoError(t, err)
	cliCert, err := ca.Client(agentID)
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ca.ServerConfig(srvCert))
	require.NoError(t, err)
	ctrlCh := make(chan *session.Session, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			close(ctrlCh)
			return
		}
		cfg := session.DefaultConfig()
		cfg.Name = "controller"
		s, err := session.Server(ctx, conn.(*tls.Conn), cfg)
		if err != nil {
			close(ctrlCh)
			return
		}
		ctrlCh <- s
		for {
			st, err := s.Accept(ctx)
			if err != nil {
				return
			}
			id := r.streamAgent.Load().(string)
			go func() {
				defer st.Close()
				r.served <- r.ing.ServeData(ctx, id, st)
			}()
		}
	}()
	acfg := session.DefaultConfig()
	acfg.Name = "agent"
	acfg.TLS = ca.ClientConfig(&cliCert)
	r.agent, err = session.Dial(ctx, ln.Addr().String(), acfg)
	require.NoError(t, err)
	ctrl := <-ctrlCh
	require.NotNil(t, ctrl, "the controller side of the session never came up")
	t.Cleanup(func() {
		cancel()
		r.agent.Close()
		ctrl.Close()
		ln.Close()
		<-done
		r.ing.Close()
		repo.Close()
	})
	return r
}

// begin opens a cycle of one disk of diskSize bytes.
func (r *rig) begin(m msg.MapState) msg.CycleBeginResponse {
	r.t.Helper()
	resp, err := r.ing.Begin(context.Background(), agentID, msg.CycleBeginRequest{
		Machine: machine, Disks: []msg.DiskInfo{{Name: "disk0", Size: diskSize, BlockSize: blockSize}}, Map: m})
	require.NoError(r.t, err)
	return resp
}

// stream is the agent's end of one data stream.
type stream struct {
	t  *testing.T
	st *session.Stream
	fw *frame.Writer
	fr *frame.Reader
}

func (r *rig) open() *stream {
	r.t.Helper()
	st, err := r.agent.Open(context.Background(), protocol.KindData)
	require.NoError(r.t, err)
	r.t.Cleanup(func() { st.Close() })
	return &stream{t: r.t, st: st, fw: frame.NewWriter(st), fr: frame.NewReader(st, data.MaxFrameSize)}
}

func (s *stream) send(typ uint8, m interface{ Append([]byte) []byte }) {
	s.t.Helper()
	require.NoError(s.t, s.fw.WriteAppend(typ, m.Append))
	require.NoError(s.t, s.fw.Flush())
}

func (s *stream) raw(b []byte) {
	s.t.Helper()
	_, err := s.st.Write(b)
	require.NoError(s.t, err)
}

// next reads the controller's next frame, failing after a bound.
func (s *stream) next() (uint8, []byte, error) {
	s.t.Helper()
	require.NoError(s.t, s.st.SetReadDeadline(time.Now().Add(20*time.Second)))
	return s.fr.Next()
}

func (s *stream) need() *data.Need {
	s.t.Helper()
	typ, p, err := s.next()
	require.NoError(s.t, err)
	require.Equal(s.t, uint8(data.FrameNeed), typ)
	n := &data.Need{}
	require.NoError(s.t, n.Decode(p))
	return n
}

func (s *stream) ack() data.Ack {
	s.t.Helper()
	typ, p, err := s.next()
	require.NoError(s.t, err)
	require.Equal(s.t, uint8(data.FrameAck), typ)
	var a data.Ack
	require.NoError(s.t, a.Decode(p))
	return a
}

// refusal reads the error frame the controller ends the stream with.
func (s *stream) refusal(code protocol.Code) *protocol.Error {
	s.t.Helper()
	typ, _, err := s.next()
	require.Equal(s.t, uint8(frame.TypeError), typ, "want an error frame, got frame type %d (%v)", typ, err)
	var pe *protocol.Error
	require.True(s.t, errors.As(err, &pe), "want a *protocol.Error, got %T: %v", err, err)
	require.Equal(s.t, code, pe.Code, "%v", pe)
	return pe
}

// served waits for ServeData's result.
func (r *rig) serveResult() error {
	r.t.Helper()
	select {
	case err := <-r.served:
		return err
	case <-time.After(20 * time.Second):
		r.t.Fatal("ServeData did not return")
		return nil
	}
}

func block(seed byte) []byte {
	b := make([]byte, blockSize)
	for i := range b {
		b[i] = seed ^ byte(i*7+i/251)
	}
	return b
}

func hashOf(b []byte) data.Hash { return data.Hash(blake3.Sum256(b)) }

func plainBlock(blk uint64, b []byte) data.Block {
	return data.Block{Disk: 0, Block: blk, Hash: hashOf(b), Codec: data.CodecNone, PlainLen: uint32(len(b)), Data: b}
}

func (r *rig) end(cycle int64, parts uint32, entries uint64) (msg.CycleEndResponse, error) {
	return r.ing.End(context.Background(), agentID, msg.CycleEndRequest{Machine: machine, Cycle: cycle,
		Parts: parts, Entries: entries, Instant: time.Now().UnixNano(), Consistency: string(storage.CrashConsistent)}, 0)
}

type recordedNote struct {
	machine        string
	point          int64
	method, reason string
	committed      int // points OnCommit was told of when the note was recorded
	listed         int // the machine's points the repository listed then
}

// exported reads the whole disk of a point.
func (r *rig) exported(point int64) []byte {
	r.t.Helper()
	d, err := r.repo.OpenDisk(context.Background(), point, "disk0")
	require.NoError(r.t, err)
	var buf bytes.Buffer
	_, err = d.WriteTo(&buf)
	require.NoError(r.t, err)
	return buf.Bytes()
}

// TestIngestCycleStoresAndCommits: a cycle with data, zero and
// deduplicated blocks is answered with the right Need, acknowledged, and
// committed as a point whose disk equals the bytes the test wrote; a
// second cycle that repeats a block's content is told not to send it.
func TestIngestCycleStoresAndCommits(t *testing.T) {
	r := newRig(t)
	want := make([]byte, diskSize)
	a, b := block(1), block(2)
	copy(want[0:], a)
	copy(want[3*blockSize:], b)

	c := r.begin(msg.MapState{Valid: true})
	require.False(t, c.Resync, c.ResyncReason)
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Part: 0, Final: true, Entries: []data.Entry{
		{Disk: 0, Block: 0, Hash: hashOf(a)},
		{Disk: 0, Block: 1, Flags: data.FlagZero},
		{Disk: 0, Block: 3, Hash: hashOf(b)},
	}})
	n := s.need()
	require.Equal(t, uint32(0), n.Part)
	require.Equal(t, []bool{true, false, true}, n.Need)
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 7, Blocks: []data.Block{plainBlock(0, a), plainBlock(3, b)}})
	require.Equal(t, data.Ack{Cycle: uint64(c.Cycle), Seq: 7}, s.ack())
	require.NoError(t, s.st.CloseWrite())
	require.NoError(t, r.serveResult())

	done, err := r.end(c.Cycle, 1, 3)
	require.NoError(t, err)
	require.Equal(t, c.Cycle, done.PointID)
	require.Equal(t, done.PointID, (<-r.points).ID, "OnCommit was not told of the point")
	require.True(t, bytes.Equal(want, r.exported(done.PointID)), "the point's disk differs from the bytes written")

	// Second cycle: block 5 gets a's content (stored already: not needed),
	// block 0 gets new content c.
	c2 := r.begin(msg.MapState{Valid: true, HeadPoint: done.PointID})
	require.False(t, c2.Resync, c2.ResyncReason)
	cc := block(3)
	copy(want[5*blockSize:], a)
	copy(want[0:], cc)
	s2 := r.open()
	s2.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c2.Cycle), Part: 0, Final: true, Entries: []data.Entry{
		{Disk: 0, Block: 5, Hash: hashOf(a)},
		{Disk: 0, Block: 0, Hash: hashOf(cc)},
	}})
	require.Equal(t, []bool{false, true}, s2.need().Need)
	zc, err := data.NewCompressor(1)
	require.NoError(t, err)
	defer zc.Close()
	blk := data.Block{Block: 0, Hash: hashOf(cc), PlainLen: blockSize}
	blk.Codec, blk.Data = zc.Compress(data.CodecZstd, nil, cc)
	s2.send(data.FrameBatch, &data.Batch{Cycle: uint64(c2.Cycle), Seq: 1, Blocks: []data.Block{blk}})
	s2.ack()
	require.NoError(t, s2.st.CloseWrite())
	require.NoError(t, r.serveResult())
	done2, err := r.end(c2.Cycle, 1, 2)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, r.exported(done2.PointID)), "the second point's disk differs from the bytes written")
	// The first point is unchanged.
	first := make([]byte, diskSize)
	copy(first[0:], a)
	copy(first[3*blockSize:], b)
	require.True(t, bytes.Equal(first, r.exported(done.PointID)), "the first point changed")
}

// TestIngestRefusesDataNotMatchingItsHash: a block whose bytes do not hash
// to the hash it was announced with is refused with code invalid, nothing
// is acknowledged, and the cycle cannot be committed.
func TestIngestRefusesDataNotMatchingItsHash(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	a, evil := block(1), block(9)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 2, Hash: hashOf(a)}}})
	require.Equal(t, []bool{true}, s.need().Need)
	bad := plainBlock(2, evil)
	bad.Hash = hashOf(a) // the announced hash, other bytes
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{bad}})
	s.refusal(protocol.CodeInvalid)
	// ServeData returns once the refusal is sent, with the agent's side
	// of the stream still open (it used to wait for the agent to close).
	require.ErrorIs(t, r.serveResult(), protocol.ErrInvalid)

	_, err := r.end(c.Cycle, 1, 1)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	pts, err := r.repo.Points(context.Background(), machine)
	require.NoError(t, err)
	require.Empty(t, pts, "a cycle with a refused batch was committed")
	ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(a)), storage.Hash(hashOf(evil))})
	require.NoError(t, err)
	require.Equal(t, []bool{false, false}, ok, "the lying block was stored")
}

// TestIngestRefusesUnannouncedBlocks: a batch block the manifest did not
// ask for, or with another hash than announced, is refused before storage.
func TestIngestRefusesUnannouncedBlocks(t *testing.T) {
	for _, tc := range []struct {
		name string
		blk  func(a, b []byte) data.Block
	}{
		{"other block", func(a, _ []byte) data.Block { return plainBlock(3, a) }},
		{"other hash", func(_, b []byte) data.Block { return plainBlock(2, b) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			c := r.begin(msg.MapState{Valid: true})
			s := r.open()
			a, b := block(1), block(2)
			s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 2, Hash: hashOf(a)}}})
			s.need()
			s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{tc.blk(a, b)}})
			s.refusal(protocol.CodeInvalid)
			require.ErrorIs(t, r.serveResult(), protocol.ErrInvalid)
			ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(a)), storage.Hash(hashOf(b))})
			require.NoError(t, err)
			require.Equal(t, []bool{false, false}, ok)
		})
	}
}

// TestIngestRefusesMalformedFrames: each malformed frame ends the stream
// with an error frame of its specific code, and ServeData returns the
// matching sentinel (the session code drops the agent on these).
func TestIngestRefusesMalformedFrames(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(s *stream, cycle uint64)
		code  protocol.Code
	}{
		{"truncated manifest payload", func(s *stream, cycle uint64) {
			p := (&data.Manifest{Cycle: cycle, Entries: []data.Entry{{Block: 1, Hash: hashOf(block(1))}}}).Append(nil)
			s.raw(frame.Append(nil, data.FrameManifest, p[:len(p)-5]))
		}, protocol.CodeInvalid},
		{"unknown frame type", func(s *stream, _ uint64) {
			s.raw(frame.Append(nil, 200, []byte("hello")))
		}, protocol.CodeInvalid},
		{"Need sent by the agent", func(s *stream, cycle uint64) {
			s.send(data.FrameNeed, &data.Need{Cycle: cycle, Need: []bool{true}})
		}, protocol.CodeInvalid},
		{"zero-length frame", func(s *stream, _ uint64) {
			s.raw([]byte{0, 0, 0, 0, 0})
		}, protocol.CodeInvalid},
		{"frame over the size limit", func(s *stream, _ uint64) {
			s.raw([]byte{0x7f, 0xff, 0xff, 0xff, data.FrameBatch})
		}, protocol.CodeTooLarge},
		{"block beyond the disk", func(s *stream, cycle uint64) {
			s.send(data.FrameManifest, &data.Manifest{Cycle: cycle, Entries: []data.Entry{{Block: diskSize / blockSize, Hash: hashOf(block(1))}}})
		}, protocol.CodeInvalid},
		{"disk that is not in the cycle", func(s *stream, cycle uint64) {
			s.send(data.FrameManifest, &data.Manifest{Cycle: cycle, Entries: []data.Entry{{Disk: 1, Block: 0, Hash: hashOf(block(1))}}})
		}, protocol.CodeInvalid},
		{"manifest part sent twice", func(s *stream, cycle uint64) {
			m := &data.Manifest{Cycle: cycle, Part: 4, Entries: []data.Entry{{Block: 0, Flags: data.FlagZero}}}
			s.send(data.FrameManifest, m)
			require.Equal(t, []bool{false}, s.need().Need)
			s.send(data.FrameManifest, m)
		}, protocol.CodeInvalid},
		{"cycle that was never begun", func(s *stream, cycle uint64) {
			s.send(data.FrameManifest, &data.Manifest{Cycle: cycle + 100, Entries: []data.Entry{{Block: 0, Flags: data.FlagZero}}})
		}, protocol.CodeNotFound},
		{"short block", func(s *stream, cycle uint64) {
			a := block(1)
			s.send(data.FrameManifest, &data.Manifest{Cycle: cycle, Entries: []data.Entry{{Block: 0, Hash: hashOf(a[:512])}}})
			s.need()
			s.send(data.FrameBatch, &data.Batch{Cycle: cycle, Seq: 1, Blocks: []data.Block{plainBlock(0, a[:512])}})
		}, protocol.CodeInvalid},
		{"patch run beyond the block", func(s *stream, cycle uint64) {
			p := data.EncodePatch(data.PatchRun{Offset: blockSize - 2, Data: []byte("xyz")})
			h := hashOf(block(5))
			s.send(data.FrameManifest, &data.Manifest{Cycle: cycle, Entries: []data.Entry{{Block: 0, Hash: h}}})
			s.need()
			s.send(data.FrameBatch, &data.Batch{Cycle: cycle, Seq: 1, Blocks: []data.Block{
				{Block: 0, Hash: h, Flags: data.FlagPatch, Codec: data.CodecNone, PlainLen: uint32(len(p)), Data: p}}})
		}, protocol.CodeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			c := r.begin(msg.MapState{Valid: true})
			s := r.open()
			tc.write(s, uint64(c.Cycle))
			s.refusal(tc.code)
			err := r.serveResult()
			require.ErrorIs(t, err, tc.code.Sentinel(), "%v", err)
		})
	}
}

// TestIngestCutStreamKeepsCycleOpen: a data stream cut inside a batch
// frame stores and acknowledges nothing of it, End refuses the cycle while
// announced blocks are missing, and a new stream into the same cycle
// completes it.
func TestIngestCutStreamKeepsCycleOpen(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	a := block(4)
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 6, Hash: hashOf(a)}}})
	require.Equal(t, []bool{true}, s.need().Need)
	whole := frame.Append(nil, data.FrameBatch, (&data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{plainBlock(6, a)}}).Append(nil))
	s.raw(whole[:len(whole)/2])
	require.NoError(t, s.st.Close()) // the cut: the rest never comes
	err := r.serveResult()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)

	_, err = r.end(c.Cycle, 1, 1)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition, "a cycle with an announced block missing was committed")
	ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(a))})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, ok)

	s2 := r.open()
	s2.raw(whole)
	s2.ack()
	require.NoError(t, s2.st.CloseWrite())
	require.NoError(t, r.serveResult())
	done, err := r.end(c.Cycle, 1, 1)
	require.NoError(t, err)
	want := make([]byte, diskSize)
	copy(want[6*blockSize:], a)
	require.True(t, bytes.Equal(want, r.exported(done.PointID)))
}

// TestIngestEndChecksCounts: End refuses a cycle whose part or entry
// count differs from what arrived, and then commits it with the right
// counts.
func TestIngestEndChecksCounts(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 0, Flags: data.FlagZero}, {Block: 1, Flags: data.FlagZero}}})
	s.need()
	_, err := r.end(c.Cycle, 2, 2)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	_, err = r.end(c.Cycle, 1, 3)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	_, err = r.ing.End(context.Background(), agentID, msg.CycleEndRequest{Machine: machine, Cycle: c.Cycle, Parts: 1, Entries: 2, Consistency: "perfect"}, 0)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = r.ing.End(context.Background(), "agent-2", msg.CycleEndRequest{Machine: machine, Cycle: c.Cycle, Parts: 1, Entries: 2, Consistency: string(storage.CrashConsistent)}, 0)
	require.ErrorIs(t, err, protocol.ErrUnauthorized, "another agent ended the cycle")
	_, err = r.end(c.Cycle, 1, 2)
	require.NoError(t, err)
	_, err = r.end(c.Cycle, 1, 2)
	require.ErrorIs(t, err, protocol.ErrNotFound, "a committed cycle was ended twice")
}

// TestIngestBeginDecidesResync: the agent's map is trusted only when it
// matches the controller's head and pending point.
func TestIngestBeginDecidesResync(t *testing.T) {
	r := newRig(t)
	require.True(t, r.begin(msg.MapState{Valid: false}).Resync, "an invalid map was trusted")
	r.ing.Forget(agentID)
	c := r.begin(msg.MapState{Valid: true, HeadPoint: 0, Pending: 0})
	// A pending point exists now: a map that does not know it is not trusted.
	require.True(t, c.Resync, "a map that does not know the pending point was trusted")
	c = r.begin(msg.MapState{Valid: true, Pending: c.Cycle})
	require.False(t, c.Resync, c.ResyncReason)
	require.True(t, c.Patches)
	_, err := r.end(c.Cycle, 0, 0)
	require.NoError(t, err)
	require.True(t, r.begin(msg.MapState{Valid: true, HeadPoint: c.Cycle + 5}).Resync, "a map claiming an unknown head was trusted")

	_, err = r.ing.Begin(context.Background(), agentID, msg.CycleBeginRequest{Machine: machine,
		Disks: []msg.DiskInfo{{Name: "disk0", Size: 0, BlockSize: blockSize}}, Map: msg.MapState{Valid: true}})
	require.ErrorIs(t, err, protocol.ErrInvalid, "an empty disk was accepted")
	_, err = r.ing.Begin(context.Background(), agentID, msg.CycleBeginRequest{Machine: machine, Map: msg.MapState{Valid: true}})
	require.ErrorIs(t, err, protocol.ErrInvalid, "a cycle without disks was accepted")
}

// TestIngestServeHashes: the hash stream lists each stored block with its
// content hash (zero blocks flagged), then a Barrier counting the runs.
func TestIngestServeHashes(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	a, b := block(1), block(2)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{
		{Block: 1, Hash: hashOf(a)}, {Block: 2, Flags: data.FlagZero}, {Block: 5, Hash: hashOf(b)}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{plainBlock(1, a), plainBlock(5, b)}})
	s.ack()

	read := func(pendingOnly bool) map[uint64]data.Hash {
		var buf bytes.Buffer
		require.NoError(t, r.ing.ServeHashes(context.Background(), agentID, uint64(c.Cycle), 0, pendingOnly, &buf))
		fr := frame.NewReader(&buf, data.MaxFrameSize)
		got := map[uint64]data.Hash{}
		var runs uint32
		for {
			typ, p, err := fr.Next()
			require.NoError(t, err, "the hash stream ended without a barrier")
			if typ == data.FrameBarrier {
				var bar data.Barrier
				require.NoError(t, bar.Decode(p))
				require.Equal(t, runs, bar.Seq)
				require.Equal(t, uint64(c.Cycle), bar.Cycle)
				_, _, err = fr.Next()
				require.ErrorIs(t, err, io.EOF)
				return got
			}
			require.Equal(t, uint8(data.FrameHashes), typ)
			var run data.HashRun
			require.NoError(t, run.Decode(p))
			runs++
			for i, z := range run.Zero {
				h := run.Hashes[i]
				if z {
					h = data.Hash{}
				}
				got[run.Start+uint64(i)] = h
			}
		}
	}
	want := map[uint64]data.Hash{1: hashOf(a), 2: {}, 5: hashOf(b)}
	require.Equal(t, want, read(true))
	require.Equal(t, want, read(false))

	var buf bytes.Buffer
	err := r.ing.ServeHashes(context.Background(), agentID, uint64(c.Cycle), 3, false, &buf)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	err = r.ing.ServeHashes(context.Background(), "agent-2", uint64(c.Cycle), 0, false, &buf)
	require.ErrorIs(t, err, protocol.ErrUnauthorized)
}

// TestIngestServeSummary: the summary resync (protocol v2) sends the
// 64-block groups holding stored blocks, with each block's fingerprint;
// the controller then checks the agent's group digest against its own
// hashes. An honest claim passes; a claim that takes a block for equal
// whose content hash differs but whose fingerprint matches (a fingerprint
// collision) is answered "mismatch", so the agent sends the group whole.
func TestIngestServeSummary(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	a, b, d := block(1), block(2), block(3)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{
		{Block: 1, Hash: hashOf(a)}, {Block: 2, Flags: data.FlagZero}, {Block: 5, Hash: hashOf(b)}, {Block: 6, Hash: hashOf(d)}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{plainBlock(1, a), plainBlock(5, b), plainBlock(6, d)}})
	s.ack()

	// claim runs one summary resync whose agent declares block 5
	// different and holds block 6 with content hash six; it returns the
	// controller's verdict on group 0.
	claim := func(six data.Hash) bool {
		agentEnd, ctrlEnd := net.Pipe()
		defer agentEnd.Close()
		served := make(chan error, 1)
		go func() {
			defer ctrlEnd.Close()
			served <- r.ing.ServeSummary(context.Background(), agentID, uint64(c.Cycle), 0, frame.NewReader(ctrlEnd, 1<<16), ctrlEnd)
		}()
		fr := frame.NewReader(agentEnd, data.MaxFrameSize)
		typ, p, err := fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameSummary), typ)
		var run data.SumRun
		require.NoError(t, run.Decode(p))
		require.Equal(t, uint64(0), run.Start)
		require.Len(t, run.Zero, data.GroupBlocks, "one group")
		for i, z := range run.Zero {
			require.Equal(t, i != 1 && i != 5 && i != 6, z, "block %d", i)
		}
		require.Equal(t, data.PrintOf(hashOf(a)), run.Prints[1])
		require.Equal(t, data.PrintOf(hashOf(b)), run.Prints[5])
		require.Equal(t, data.PrintOf(hashOf(d)), run.Prints[6])
		typ, p, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameBarrier), typ)
		var bar data.Barrier
		require.NoError(t, bar.Decode(p))
		require.Equal(t, uint32(1), bar.Seq)

		g := data.NewGroupDigest(0, 0)
		for i := range data.GroupBlocks {
			switch i {
			case 1:
				g.Block(hashOf(a))
			case 5:
				g.Skip()
			case 6:
				g.Block(six)
			default:
				g.Zero()
			}
		}
		fw := frame.NewWriter(agentEnd)
		v := data.VerifyRun{Start: 0, Groups: []data.GroupCheck{{Differ: 1 << 5, Digest: g.Sum()}}}
		require.NoError(t, fw.WriteAppend(data.FrameVerify, v.Append))
		require.NoError(t, fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: uint64(c.Cycle), Seq: 1}).Append))
		require.NoError(t, fw.Flush())
		typ, p, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameVerified), typ)
		var verdict data.Verified
		require.NoError(t, verdict.Decode(p))
		require.Len(t, verdict.Mismatch, 1)
		typ, _, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameBarrier), typ)
		require.NoError(t, <-served)
		return verdict.Mismatch[0]
	}
	require.False(t, claim(hashOf(d)), "an honest claim was refused")
	forged := hashOf(d)
	forged[31] ^= 1
	require.Equal(t, data.PrintOf(hashOf(d)), data.PrintOf(forged), "the forged hash keeps the fingerprint")
	require.True(t, claim(forged), "a block whose fingerprint collided was taken for equal")
}

// TestIngestSessionLossDropsCycle: Forget (the session ended) drops the
// in-memory cycle; the pending point stays and a new Begin resumes it.
func TestIngestSessionLossDropsCycle(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	a := block(8)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 0, Hash: hashOf(a)}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{plainBlock(0, a)}})
	s.ack()
	r.ing.Forget(agentID)
	_, err := r.end(c.Cycle, 1, 1)
	require.ErrorIs(t, err, protocol.ErrNotFound)

	c2 := r.begin(msg.MapState{Valid: true, Pending: c.Cycle})
	require.Equal(t, c.Cycle, c2.Cycle, "the pending point was not resumed")
	require.False(t, c2.Resync, c2.ResyncReason)
	_, err = r.end(c2.Cycle, 0, 0)
	require.NoError(t, err)
	want := make([]byte, diskSize)
	copy(want, a)
	require.True(t, bytes.Equal(want, r.exported(c2.Cycle)), "the resumed point lost the first session's block")
}

// TestIngestPatches: a patch over the stored block is stored and
// acknowledged, and its point reads the patched block; a patch whose
// result does not hash to the announced hash (the agent's base differed)
// is acknowledged — it is checked after it is stored — but the cycle's
// end is refused with failed_precondition, the code that makes the agent
// send whole blocks, no point is made, and the next cycle resyncs.
func TestIngestPatches(t *testing.T) {
	r := newRig(t)
	a := block(1)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 2, Hash: hashOf(a)}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{plainBlock(2, a)}})
	s.ack()
	require.NoError(t, s.st.CloseWrite())
	require.NoError(t, r.serveResult())
	p1, err := r.end(c.Cycle, 1, 1)
	require.NoError(t, err)

	patch := func(base []byte, seed byte) (data.Block, []byte) {
		run := data.PatchRun{Offset: 100, Data: bytes.Repeat([]byte{seed}, 300)}
		after := append([]byte(nil), base...)
		copy(after[100:], run.Data)
		p := data.EncodePatch(run)
		return data.Block{Block: 2, Hash: hashOf(after), Flags: data.FlagPatch, Codec: data.CodecNone, PlainLen: uint32(len(p)), Data: p}, after
	}

	c2 := r.begin(msg.MapState{Valid: true, HeadPoint: p1.PointID})
	require.True(t, c2.Patches)
	good, after := patch(a, 0xee)
	s2 := r.open()
	s2.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c2.Cycle), Entries: []data.Entry{{Block: 2, Hash: good.Hash}}})
	require.Equal(t, []bool{true}, s2.need().Need)
	s2.send(data.FrameBatch, &data.Batch{Cycle: uint64(c2.Cycle), Seq: 1, Blocks: []data.Block{good}})
	s2.ack()
	require.NoError(t, s2.st.CloseWrite())
	require.NoError(t, r.serveResult())
	p2, err := r.end(c2.Cycle, 1, 1)
	require.NoError(t, err)
	want := make([]byte, diskSize)
	copy(want[2*blockSize:], after)
	require.True(t, bytes.Equal(want, r.exported(p2.PointID)), "the patched point differs from the bytes the test made")

	// The agent believes the block holds other content than stored.
	c3 := r.begin(msg.MapState{Valid: true, HeadPoint: p2.PointID})
	bad, wrongAfter := patch(block(7), 0x11)
	s3 := r.open()
	s3.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c3.Cycle), Entries: []data.Entry{{Block: 2, Hash: bad.Hash}}})
	require.Equal(t, []bool{true}, s3.need().Need)
	s3.send(data.FrameBatch, &data.Batch{Cycle: uint64(c3.Cycle), Seq: 1, Blocks: []data.Block{bad}})
	s3.ack()
	require.NoError(t, s3.st.CloseWrite())
	require.NoError(t, r.serveResult())
	ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(wrongAfter))})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, ok, "a patch record is never offered for dedup")
	_, err = r.end(c3.Cycle, 1, 1)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	pts, err := r.repo.Points(context.Background(), machine)
	require.NoError(t, err)
	require.Equal(t, p2.PointID, pts[len(pts)-1].ID, "no point was made of the bad patch")
	c4 := r.begin(msg.MapState{Valid: true, HeadPoint: p2.PointID, Pending: c3.Cycle})
	require.True(t, c4.Resync, "the agent's map holds acknowledgements of a pending point that is gone")
}

// TestIngestRefusesAnotherAgentsCycle: a data stream of one agent cannot
// send into the cycle another agent began.
func TestIngestRefusesAnotherAgentsCycle(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	r.streamAgent.Store("agent-2")
	s := r.open()
	a := block(1)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 0, Hash: hashOf(a)}}})
	s.refusal(protocol.CodeUnauthorized)
	require.ErrorIs(t, r.serveResult(), protocol.ErrUnauthorized)
	_, err := r.end(c.Cycle, 0, 0)
	require.NoError(t, err, "the owner's cycle was harmed by the other agent's attempt")
}

// TestIngestConcurrentStreams: two data streams of one cycle send many
// small batches at once (their writes merge in the group commit); every
// batch is acknowledged once and the point equals the bytes sent.
func TestIngestConcurrentStreams(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	want := make([]byte, diskSize)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for sn := range 2 {
		s := r.open()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Stream sn owns the blocks with parity sn, one manifest part
			// each and a batch per block.
			var es []data.Entry
			var bs []data.Block
			for b := uint64(sn); b < diskSize/blockSize; b += 2 {
				blk := block(byte(10 + b))
				copy(want[b*blockSize:], blk) // disjoint ranges per stream
				es = append(es, data.Entry{Block: b, Hash: hashOf(blk)})
				bs = append(bs, plainBlock(b, blk))
			}
			if err := s.fw.WriteAppend(data.FrameManifest, (&data.Manifest{Cycle: uint64(c.Cycle), Part: uint32(sn), Entries: es}).Append); err != nil {
				errs <- err
				return
			}
			for i := range bs {
				if err := s.fw.WriteAppend(data.FrameBatch, (&data.Batch{Cycle: uint64(c.Cycle), Seq: uint32(i + 1), Blocks: bs[i : i+1]}).Append); err != nil {
					errs <- err
					return
				}
			}
			if err := s.fw.Flush(); err != nil {
				errs <- err
				return
			}
			acks := map[uint32]bool{}
			for len(acks) < len(bs) {
				typ, p, err := s.fr.Next()
				if err != nil {
					errs <- err
					return
				}
				switch typ {
				case data.FrameNeed:
				case data.FrameAck:
					var a data.Ack
					if err := a.Decode(p); err != nil {
						errs <- err
						return
					}
					if acks[a.Seq] {
						errs <- fmt.Errorf("stream %d: batch %d acknowledged twice", sn, a.Seq)
						return
					}
					acks[a.Seq] = true
				default:
					errs <- fmt.Errorf("stream %d: frame type %d", sn, typ)
					return
				}
			}
			errs <- s.st.CloseWrite()
		}()
	}
	wg.Wait()
	for range 2 {
		require.NoError(t, <-errs)
		require.NoError(t, r.serveResult())
	}
	done, err := r.end(c.Cycle, 2, diskSize/blockSize)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, r.exported(done.PointID)), "the point differs from the bytes sent")
}

// TestIngestRefusesSealedBlocks: a sealed block (the restore streams'
// encrypted chunks) on a data stream is refused, and nothing is stored.
func TestIngestRefusesSealedBlocks(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	a := block(3)
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 1, Hash: hashOf(a)}}})
	require.Equal(t, []bool{true}, s.need().Need)
	// Its data is the plaintext itself: read as plain it would verify, so
	// only the flag check refuses it.
	sealed := plainBlock(1, a)
	sealed.Flags = data.FlagSealed
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{sealed}})
	s.refusal(protocol.CodeInvalid)
	require.ErrorIs(t, r.serveResult(), protocol.ErrInvalid)
	ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(a))})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, ok, "the sealed block was stored")
}

// TestIngestBeginTrustsANewDiskOnlyWhenNothingOfItIsStored: a disk the
// agent starts a new (all-zero) block map for is synced alone when the
// repository holds nothing of it; once the repository has rows of a disk
// of that name (it was in a point, then removed), a new map of it orders
// a hash resync naming the disk.
func TestIngestBeginTrustsANewDiskOnlyWhenNothingOfItIsStored(t *testing.T) {
	r := newRig(t)
	c := r.begin(msg.MapState{Valid: true})
	require.False(t, c.Resync, c.ResyncReason)
	_, err := r.end(c.Cycle, 0, 0)
	require.NoError(t, err)
	head := c.Cycle
	begin := func(disks ...msg.DiskInfo) msg.CycleBeginResponse {
		t.Helper()
		resp, err := r.ing.Begin(context.Background(), agentID, msg.CycleBeginRequest{Machine: machine, Disks: disks,
			Map: msg.MapState{Valid: true, HeadPoint: head}})
		require.NoError(t, err)
		return resp
	}
	old := msg.DiskInfo{Name: "disk0", Size: diskSize, BlockSize: blockSize}
	added := msg.DiskInfo{Name: "disk1", Size: diskSize, BlockSize: blockSize, NewMap: true}
	c = begin(old, added)
	require.False(t, c.Resync, "a new disk the repository holds nothing of made a resync: %s", c.ResyncReason)
	_, err = r.end(c.Cycle, 0, 0)
	require.NoError(t, err)
	head = c.Cycle

	// disk1 is removed (a point without it), then added again with a new map.
	c = begin(old)
	require.False(t, c.Resync, c.ResyncReason)
	_, err = r.end(c.Cycle, 0, 0)
	require.NoError(t, err)
	head = c.Cycle
	c = begin(old, added)
	require.True(t, c.Resync, "a new map of a disk the repository holds was trusted")
	require.Contains(t, c.ResyncReason, "no block map of disk disk1")
}

// TestIngestRecordsHowThePointWasMade: a point's method and reason are
// recorded before OnCommit hears of it: from cycle.end's fields, or from
// an older agent's note alone (its first word and the rest); a cycle
// that says nothing records nothing.
func TestIngestRecordsHowThePointWasMade(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		req            msg.CycleEndRequest
		method, reason string
	}{
		{msg.CycleEndRequest{Note: "direct-read: old words", Method: "direct-read", Reason: "no reflink or snapshot view on this filesystem (ext4)"},
			"direct-read", "no reflink or snapshot view on this filesystem (ext4)"},
		{msg.CycleEndRequest{Note: "direct-read: disks read while the machine may be writing them"}, "direct-read", "disks read while the machine may be writing them"},
		{msg.CycleEndRequest{Note: "reflink"}, "reflink", ""},
		{msg.CycleEndRequest{}, "", ""},
	} {
		c := r.begin(msg.MapState{Valid: true})
		s := r.open()
		s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Part: 0, Final: true, Entries: []data.Entry{
			{Disk: 0, Block: 1, Flags: data.FlagZero},
		}})
		s.need()
		require.NoError(t, s.st.CloseWrite())
		require.NoError(t, r.serveResult())
		req := tc.req
		req.Machine, req.Cycle, req.Parts, req.Entries = machine, c.Cycle, 1, 1
		req.Instant, req.Consistency = time.Now().UnixNano(), string(storage.Inconsistent)
		done, err := r.ing.End(context.Background(), agentID, req, 0)
		require.NoError(t, err)
		if tc.method == "" {
			require.Empty(t, r.notes, "a cycle that names no method records nothing")
		} else {
			n := <-r.notes
			require.Equal(t, recordedNote{machine: machine, point: done.PointID, method: tc.method, reason: tc.reason}, n,
				"recorded before the point is listed (listed = 0) and before OnCommit was told (committed = 0)")
		}
		require.Equal(t, done.PointID, (<-r.points).ID)
	}
}
