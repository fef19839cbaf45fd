package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// targetAgent is an Agent with what the recovery-site handlers use (no
// enrolled state: the session is made here), serving the agent side of a
// real mTLS session over loopback TCP. It returns the controller side.
func targetAgent(t *testing.T, a *Agent) *session.Session {
	t.Helper()
	ca, err := testpki.NewCA("agent target test CA", time.Now())
	require.NoError(t, err)
	srvCert, err := ca.Server()
	require.NoError(t, err)
	cliCert, err := ca.Client("target")
	require.NoError(t, err)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, ca.ServerConfig(srvCert))
	t.Cleanup(func() { ln.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctrlCh := make(chan *session.Session, 1)
	go func() {
		defer close(ctrlCh)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if s, err := session.Server(context.Background(), c.(*tls.Conn), session.Config{Name: "controller", Logger: log}); err == nil {
			ctrlCh <- s
		}
	}()
	sess, err := session.Dial(context.Background(), raw.Addr().String(), session.Config{TLS: ca.ClientConfig(&cliCert), Name: "agent", Logger: log})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); a.serve(ctx, sess) }()
	ctrl, ok := <-ctrlCh
	require.True(t, ok, "the controller side of the session failed")
	t.Cleanup(func() {
		cancel()
		ctrl.Close()
		sess.Close()
		<-served
	})
	return ctrl
}

func newTargetAgent(t *testing.T) *Agent {
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	cfg := apply.DefaultConfig()
	cfg.Logger = log
	site, err := apply.NewSite(cfg)
	require.NoError(t, err)
	// The site tests drive exec target drivers, which the agent's owner
	// allows (permissions_test.go covers the refusal).
	return &Agent{cfg: Config{Now: time.Now}, log: log, site: site, perms: msg.Permissions{ExecDrivers: true}}
}

// restore sends a restore stream of whole blocks of content (one disk) and
// returns the agent's answer. It reads the answer while it writes, as a
// controller must: a refusal comes while blocks are still on their way,
// and the agent reads no more after it.
func restore(t *testing.T, ctrl *session.Session, h msg.RestoreHeader, content []byte, blocks []uint64) (data.Ack, error) {
	t.Helper()
	st, err := ctrl.Open(t.Context(), protocol.KindRestore)
	require.NoError(t, err)
	defer st.Close()
	sent := make(chan error, 1)
	go func() { sent <- sendRestore(st, h, content, blocks) }()
	defer func() {
		st.Close() // wakes a sender the agent stopped reading
		<-sent
	}()
	typ, p, err := frame.NewReader(st, 0).Next()
	if err != nil {
		return data.Ack{}, err
	}
	require.Equal(t, uint8(data.FrameAck), typ)
	var ack data.Ack
	require.NoError(t, ack.Decode(p))
	return ack, nil
}

func sendRestore(st *session.Stream, h msg.RestoreHeader, content []byte, blocks []uint64) error {
	fw := frame.NewWriter(st)
	hb, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := fw.Write(msg.FrameRestoreHeader, hb); err != nil {
		return err
	}
	bs := h.Disks[0].BlockSize
	var batch data.Batch
	seq := uint32(0)
	flush := func() error {
		if len(batch.Blocks) == 0 {
			return nil
		}
		batch.Cycle, batch.Seq = uint64(h.To), seq
		seq++
		err := fw.WriteAppend(data.FrameBatch, batch.Append)
		batch.Blocks = batch.Blocks[:0]
		return err
	}
	for _, b := range blocks {
		p := content[int(b)*bs : int(b+1)*bs]
		batch.Blocks = append(batch.Blocks, data.Block{Block: b, Hash: data.Hash(blake3.Sum256(p)), PlainLen: uint32(bs), Data: p})
		if len(batch.Blocks) == 8 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	bar := data.Barrier{Cycle: uint64(h.To), Seq: seq}
	if err := fw.WriteAppend(data.FrameBarrier, bar.Append); err != nil {
		return err
	}
	return fw.Flush()
}

func call[T any](t *testing.T, ctrl *session.Session, method string, req any) (T, error) {
	t.Helper()
	var out T
	err := rpc.Call(t.Context(), ctrl, method, req, &out)
	return out, err
}

func requireCode(t *testing.T, err error, code protocol.Code) {
	t.Helper()
	var pe *protocol.Error
	require.ErrorAs(t, err, &pe, "%v", err)
	require.Equal(t, code, pe.Code, "%v", pe)
}

// TestTargetOperations drives a recovery site through the controller's
// calls over a real session: staging by restore streams, status, a test
// failover's clone and start, promote, demote, remove, and the refusals.
func TestTargetOperations(t *testing.T) {
	a := newTargetAgent(t)
	ctrl := targetAgent(t, a)
	dir := t.TempDir()
	disk := msg.TargetDisk{Name: "sda", Size: 1 << 20, BlockSize: 64 << 10}
	content := make([]byte, disk.Size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	all := make([]uint64, 16)
	for i := range all {
		all[i] = uint64(i)
	}

	st, err := call[msg.TargetStatusResponse](t, ctrl, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: "web"})
	require.NoError(t, err)
	require.Empty(t, st.Sets)
	if runtime.GOOS == "linux" {
		require.Positive(t, st.FreeBytes, "the free space of the target directory's filesystem (a plan's dry run shows it)")
	}

	h := msg.RestoreHeader{Ref: msg.TargetRef{Dir: dir, Machine: "web", Set: "staged"}, To: 3, Disks: []msg.TargetDisk{disk}}
	_, err = restore(t, ctrl, h, content, all)
	requireCode(t, err, protocol.CodeNotFound) // no Create
	h.Create = true
	ack, err := restore(t, ctrl, h, content, all)
	require.NoError(t, err)
	require.Equal(t, data.Ack{Cycle: 3, Seq: 2}, ack)

	st, err = call[msg.TargetStatusResponse](t, ctrl, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: "web"})
	require.NoError(t, err)
	require.Equal(t, int64(3), st.Sets["staged"].Point)
	require.Equal(t, filepath.Join(dir, "web", "staged", "sda.raw"), st.Sets["staged"].Disks[0].Path)
	require.Equal(t, disk.Size, st.BytesWritten)

	// A move from a point the set does not hold is refused.
	h2 := msg.RestoreHeader{Ref: h.Ref, From: 2, To: 4, Disks: h.Disks}
	_, err = restore(t, ctrl, h2, content, all[:1])
	requireCode(t, err, protocol.CodeFailedPrecondition)
	require.ErrorContains(t, err, "staged holds point 3")

	// Test failover: clone, then start on the clone with FERRY_TEST=1.
	cl, err := call[msg.TargetCloneResponse](t, ctrl, msg.MethodTargetClone, msg.TargetCloneRequest{Dir: dir, Machine: "web", To: "test-7"})
	require.NoError(t, err)
	t.Logf("clone: %+v", cl)
	got, err := os.ReadFile(filepath.Join(dir, "web", "test-7", "sda.raw"))
	require.NoError(t, err)
	require.Equal(t, content, got)
	_, err = call[msg.TargetCloneResponse](t, ctrl, msg.MethodTargetClone, msg.TargetCloneRequest{Dir: dir, Machine: "web", To: "live"})
	requireCode(t, err, protocol.CodeInvalid)

	hyp := t.TempDir()
	cmds := msg.Driver{
		Start:  `env | grep '^FERRY_' | sort > "` + hyp + `/$FERRY_MACHINE.env"; echo started`,
		Status: `if [ -f "` + hyp + `/$FERRY_MACHINE.env" ]; then echo running; else echo absent; fi`,
	}
	ref := msg.TargetRef{Dir: dir, Machine: "web", Set: "test-7"}
	dr, err := call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: "web-test-7", Action: "status", Commands: cmds,
	})
	require.NoError(t, err)
	require.Equal(t, "absent", dr.Status)
	dr, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: "web-test-7", Action: "start", Commands: cmds, Env: map[string]string{"FERRY_TEST": "1"}, Ref: &ref,
	})
	require.NoError(t, err)
	require.Contains(t, dr.Output, "started")
	env, err := os.ReadFile(filepath.Join(hyp, "web-test-7.env"))
	require.NoError(t, err)
	require.Contains(t, string(env), "FERRY_TEST=1\n")
	require.Contains(t, string(env), "FERRY_MACHINE=web-test-7\n")
	dr, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: "web-test-7", Action: "status", Commands: cmds,
	})
	require.NoError(t, err)
	require.Equal(t, "running", dr.Status)
	st, err = call[msg.TargetStatusResponse](t, ctrl, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: "web"})
	require.NoError(t, err)
	require.True(t, st.Sets["test-7"].Written, "a start marks its set written")
	require.False(t, st.Sets["staged"].Written)

	// A start that names a set through the environment marks it; one whose
	// set cannot be marked does not run.
	require.NoError(t, os.Remove(filepath.Join(hyp, "web-test-7.env")))
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: "web-test-7", Action: "start", Commands: cmds, Env: map[string]string{"FERRY_SET": "test-8", "FERRY_DIR": dir, "FERRY_MACHINE": "web"},
	})
	requireCode(t, err, protocol.CodeNotFound)
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: "web-test-7", Action: "start", Commands: cmds, Env: map[string]string{"FERRY_SET": "test-7"},
	})
	requireCode(t, err, protocol.CodeInvalid)
	require.NoFileExists(t, filepath.Join(hyp, "web-test-7.env"), "the driver ran although its set could not be marked")
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{Machine: "x", Action: "reboot", Commands: cmds})
	requireCode(t, err, protocol.CodeInvalid)
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{Machine: "x", Action: "stop", Commands: cmds})
	requireCode(t, err, protocol.CodeFailedPrecondition) // no stop command

	// Cleanup of the test, then failover: promote (twice), demote, remove.
	_, err = call[struct{}](t, ctrl, msg.MethodTargetRemove, ref)
	require.NoError(t, err)
	require.NoDirExists(t, filepath.Join(dir, "web", "test-7"))
	web := msg.TargetRef{Dir: dir, Machine: "web"}
	for range 2 {
		_, err = call[struct{}](t, ctrl, msg.MethodTargetPromote, web)
		require.NoError(t, err)
	}
	st, err = call[msg.TargetStatusResponse](t, ctrl, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: "web"})
	require.NoError(t, err)
	require.Equal(t, int64(3), st.Sets["live"].Point)
	require.NotContains(t, st.Sets, "staged")
	_, err = call[struct{}](t, ctrl, msg.MethodTargetDemote, web)
	require.NoError(t, err)
	require.DirExists(t, filepath.Join(dir, "web", "staged"))

	_, err = call[struct{}](t, ctrl, msg.MethodTargetPromote, msg.TargetRef{Dir: dir, Machine: "db"})
	requireCode(t, err, protocol.CodeNotFound)
	_, err = call[msg.TargetStatusResponse](t, ctrl, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: "relative", Machine: "web"})
	requireCode(t, err, protocol.CodeInvalid)
	_, err = call[struct{}](t, ctrl, msg.MethodTargetRemove, msg.TargetRef{Dir: dir, Machine: "web", Set: "../../etc"})
	requireCode(t, err, protocol.CodeInvalid)
}

// TestTargetStateOutlivesSessions: the bytes-written count and the
// machine locks belong to the agent, not to one session.
func TestTargetStateOutlivesSessions(t *testing.T) {
	a := newTargetAgent(t)
	dir := t.TempDir()
	disk := msg.TargetDisk{Name: "d", Size: 256 << 10, BlockSize: 64 << 10}
	content := []byte(strings.Repeat("ferry ", int(disk.Size)/6+1))[:disk.Size]
	h := msg.RestoreHeader{Ref: msg.TargetRef{Dir: dir, Machine: "m", Set: "staged"}, To: 1, Disks: []msg.TargetDisk{disk}, Create: true}
	_, err := restore(t, targetAgent(t, a), h, content, []uint64{0, 1, 2, 3})
	require.NoError(t, err)

	st, err := call[msg.TargetStatusResponse](t, targetAgent(t, a), msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: "m"})
	require.NoError(t, err)
	require.Equal(t, disk.Size, st.BytesWritten)
	require.Same(t, a.site, a.site)
	require.NotSame(t, a.site, newTargetAgent(t).site, "agents share nothing")
}
