package apply

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// sessionPair is a real mTLS session over loopback TCP: the agent dials,
// the controller accepts, as in production. The agent side serves restore
// streams with site under ctx; results arrive on the channel.
func sessionPair(t testing.TB, ctx context.Context, site *Site) (ctrl *session.Session, results <-chan served) {
	t.Helper()
	ca, err := testpki.NewCA("apply test CA", time.Now())
	require.NoError(t, err)
	srvCert, err := ca.Server()
	require.NoError(t, err)
	cliCert, err := ca.Client("target-agent")
	require.NoError(t, err)

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, ca.ServerConfig(srvCert))
	t.Cleanup(func() { ln.Close() })
	ctrlCh := make(chan *session.Session, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ctrlCh)
			return
		}
		s, err := session.Server(context.Background(), c.(*tls.Conn), session.Config{Name: "controller", Logger: testLogger(t)})
		if err != nil {
			close(ctrlCh)
			return
		}
		ctrlCh <- s
	}()
	agent, err := session.Dial(context.Background(), raw.Addr().String(), session.Config{
		TLS: ca.ClientConfig(&cliCert), Name: "agent", Logger: testLogger(t),
	})
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	ctrl, ok := <-ctrlCh
	require.True(t, ok, "the controller side of the session failed")
	t.Cleanup(func() { ctrl.Close() })

	ch := make(chan served, 4)
	go func() {
		for {
			st, err := agent.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				if st.Kind() != protocol.KindRestore {
					st.Reset(protocol.Errorf(protocol.CodeInvalid, "not a restore stream"))
					return
				}
				res, err := site.ServeRestore(ctx, st)
				ch <- served{res, err}
			}()
		}
	}()
	return ctrl, ch
}

func TestRestoreOverSession(t *testing.T) {
	site := newTestSite(t)
	ctrl, results := sessionPair(t, t.Context(), site)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(31, 32))
	im := newImage(
		msg.TargetDisk{Name: "system", Size: 6<<20 + 4096, BlockSize: 64 << 10},
		msg.TargetDisk{Name: "data", Size: 2 << 20, BlockSize: 64 << 10},
	)
	mixed(rng, im)

	st, err := ctrl.Open(t.Context(), protocol.KindRestore)
	require.NoError(t, err)
	defer st.Close()
	h := header(dir, "srv", SetStaged, 0, 11, im)
	h.Create = true
	blocks := im.encode(t, im.all())
	werr := make(chan error, 1)
	go func() { werr <- writeRestore(st, h, blocks, 16) }()
	ack, err := readReply(st)
	require.NoError(t, err)
	require.NoError(t, wait(t, werr))
	s := wait(t, results)
	require.NoError(t, s.err)
	require.Equal(t, uint64(11), ack.Cycle)
	require.Equal(t, uint32((len(blocks)+15)/16), ack.Seq)
	requireContent(t, setPath(dir, "srv", SetStaged), im)
}

// TestRestoreEndsWhenTheControllerGivesUp: the controller resets its
// stream in the middle of a move; the agent stops, and the set says it is
// between points.
func TestRestoreEndsWhenTheControllerGivesUp(t *testing.T) {
	site := newTestSite(t)
	ctrl, results := sessionPair(t, t.Context(), site)
	dir := t.TempDir()
	im := twoDisks()
	mixed(rand.New(rand.NewPCG(33, 34)), im)

	st, err := ctrl.Open(t.Context(), protocol.KindRestore)
	require.NoError(t, err)
	h := header(dir, "srv", SetStaged, 0, 1, im)
	h.Create = true
	fw := frame.NewWriter(st)
	hb, err := json.Marshal(h)
	require.NoError(t, err)
	require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
	_, err = writeBatches(fw, 1, 0, im.encode(t, im.all())[:8], 4)
	require.NoError(t, err)
	st.Reset(protocol.Errorf(protocol.CodeCancelled, "job cancelled"))

	s := wait(t, results)
	require.ErrorIs(t, s.err, protocol.ErrCancelled, "the controller's own error comes through")
	state, err := ReadState(setPath(dir, "srv", SetStaged))
	require.NoError(t, err)
	require.Equal(t, int64(1), state.MovingTo)
}

// TestRestoreStopsWithTheAgent: the agent's context ends in the middle of a
// stream whose sender has gone quiet; ServeRestore returns at once.
func TestRestoreStopsWithTheAgent(t *testing.T) {
	site := newTestSite(t)
	ctx, cancel := context.WithCancel(t.Context())
	ctrl, results := sessionPair(t, ctx, site)
	dir := t.TempDir()
	im := twoDisks()

	st, err := ctrl.Open(t.Context(), protocol.KindRestore)
	require.NoError(t, err)
	defer st.Close()
	h := header(dir, "srv", SetStaged, 0, 1, im)
	h.Create = true
	fw := frame.NewWriter(st)
	hb, err := json.Marshal(h)
	require.NoError(t, err)
	require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
	require.NoError(t, fw.Flush())
	require.Eventually(t, func() bool {
		sets, err := site.Status(t.Context(), dir, "srv")
		return err == nil && sets[SetStaged].MovingTo == 1
	}, 10*time.Second, 5*time.Millisecond)

	cancel()
	s := wait(t, results)
	require.ErrorIs(t, s.err, context.Canceled)
	// The machine is free again.
	_, err = site.Clone(t.Context(), dir, "srv", "test-x")
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition, "free, and the set is between points")
}
