package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// rssBudget is what an attack may add to the controller's resident memory.
const rssBudget = 64 << 20

// procMem reads a process's VmRSS and VmHWM (bytes) from /proc.
func procMem(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		require.NoError(t, err, "%s: %q", k, v)
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	require.NoError(t, sc.Err())
	require.NotZero(t, rss, "no VmRSS for pid %d", pid)
	require.NotZero(t, hwm, "no VmHWM for pid %d", pid)
	return rss, hwm
}

// attackTarget is a controller with one enrolled agent replicating a
// machine every second: what an attack must not disturb.
type attackTarget struct {
	c        *Controller
	pid      int
	baseline int64 // VmRSS once the agent made its first point
	first    Point
}

func startAttackTarget(t *testing.T) attackTarget {
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "good")
	img := filepath.Join(t.TempDir(), "d.img")
	makeImage(t, img, 51, 8<<20)
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm", "--agent", "good", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("vm", 0, time.Minute)
	pid := c.Proc.cmd.Process.Pid
	rss, _ := procMem(t, pid)
	t.Logf("controller pid %d: VmRSS %d MiB before the attack", pid, rss>>20)
	return attackTarget{c: c, pid: pid, baseline: rss, first: first}
}

// checkServing requires that the enrolled agent still makes points and the
// admin API answers while the attack holds its connections.
func (a attackTarget) checkServing(t *testing.T) {
	t.Helper()
	last := a.c.Points("vm")
	require.NotEmpty(t, last)
	a.c.WaitPoint("vm", last[len(last)-1].ID, time.Minute)
	var agents []struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
	}
	a.c.JSON(&agents, "agents", "list")
	require.Len(t, agents, 1)
	require.True(t, agents[0].Connected, "the enrolled agent stays connected")
}

// checkMemory requires the controller's peak RSS to stay within rssBudget
// of its baseline.
func (a attackTarget) checkMemory(t *testing.T, what string) {
	t.Helper()
	rss, hwm := procMem(t, a.pid)
	t.Logf("%s: VmRSS %d MiB, VmHWM %d MiB (baseline %d MiB, budget +%d MiB)",
		what, rss>>20, hwm>>20, a.baseline>>20, rssBudget>>20)
	require.Less(t, hwm-a.baseline, int64(rssBudget), "%s: the controller's peak RSS grew by %d MiB", what, (hwm-a.baseline)>>20)
}

// attackerConfig is a session configuration without a client certificate:
// what anyone who can reach the agent port has.
func attackerConfig() session.Config {
	return session.Config{
		Name: "agent",
		TLS:  &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, //nolint:gosec // the attacker does not care who answers
	}
}

// partialEnrol opens an enrol stream and sends the header of a request
// frame of rpc.MaxFrame bytes, then up to send bytes of its payload, and
// stops without finishing the frame. It returns the bytes the controller
// took before refusing or before the write deadline.
func partialEnrol(ctx context.Context, sess *session.Session, send int, deadline time.Duration) (*session.Stream, int, error) {
	st, err := sess.Open(ctx, protocol.KindEnrol)
	if err != nil {
		return nil, 0, err
	}
	_ = st.SetWriteDeadline(time.Now().Add(deadline))
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(rpc.MaxFrame)+1)
	hdr[4] = rpc.FrameRequest
	if _, err := st.Write(hdr[:]); err != nil {
		return st, 0, err
	}
	junk := make([]byte, 64<<10)
	n := 0
	for n < send {
		k, err := st.Write(junk[:min(len(junk), send-n)])
		n += k
		if err != nil {
			return st, n, err
		}
	}
	return st, n, nil
}

// TestPreauthOneConnectionManyEnrolStreams: one TLS connection without
// token or certificate opens 200 enrol streams, each sending most of a
// 4 MiB request frame and stopping. The controller's peak RSS stays within
// +64 MiB of its baseline, and the enrolled agent goes on making points.
// (Before the limits, RSS went from about 20 MB to over 1 GB.)
func TestPreauthOneConnectionManyEnrolStreams(t *testing.T) {
	a := startAttackTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sess, err := session.Dial(ctx, a.c.Addr, attackerConfig())
	require.NoError(t, err, "a session without a certificate is allowed: it may only enrol")
	defer sess.Close()

	const streams = 200
	const each = rpc.MaxFrame - 256<<10 // most of the frame
	var sent, opened, refused atomic.Int64
	var held sync.Map
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for range work {
				st, n, err := partialEnrol(ctx, sess, each, 10*time.Second)
				sent.Add(int64(n))
				if st != nil {
					opened.Add(1)
					held.Store(st, true)
				}
				if err != nil {
					refused.Add(1)
				}
			}
		})
	}
	for i := range streams {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("attack: %d streams opened, %d refused or stalled, %d MiB taken by the controller",
		opened.Load(), refused.Load(), sent.Load()>>20)

	a.checkServing(t)
	a.checkMemory(t, "one connection, 200 enrol streams")
	select {
	case <-sess.Done():
		t.Logf("the controller ended the session: %v", sess.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived its stream limit")
	}
	held.Range(func(k, _ any) bool { k.(*session.Stream).Close(); return true })
}

// TestPreauthManyConnections: 500 connections without a certificate, from
// 50 source addresses, each opening two enrol streams (the per-session cap)
// that send as much of a 4 MiB request frame as the controller takes. The
// controller's peak RSS stays within +64 MiB, the enrolled agent goes on
// making points, and once the attackers leave a real enrolment succeeds.
func TestPreauthManyConnections(t *testing.T) {
	a := startAttackTarget(t)
	_, port, err := net.SplitHostPort(a.c.Addr)
	require.NoError(t, err)
	target := net.JoinHostPort("127.0.0.1", port)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const conns, addrs, perStream = 500, 50, 512 << 10
	var mu sync.Mutex
	var sessions []*session.Session
	var dialled, established, streamsOpen, sent atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // dial concurrency of the attacker
	for i := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%addrs))}
			d := net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
			raw, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			dialled.Add(1)
			hctx, hcancel := context.WithTimeout(ctx, 15*time.Second)
			sess, err := session.Client(hctx, raw, attackerConfig())
			hcancel()
			if err != nil {
				return
			}
			established.Add(1)
			mu.Lock()
			sessions = append(sessions, sess)
			mu.Unlock()
			for range 2 {
				st, n, _ := partialEnrol(ctx, sess, perStream, 3*time.Second)
				sent.Add(int64(n))
				if st != nil {
					streamsOpen.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("attack: %d TCP connections, %d sessions, %d enrol streams, %d MiB taken by the controller",
		dialled.Load(), established.Load(), streamsOpen.Load(), sent.Load()>>20)
	require.Equal(t, int64(conns), dialled.Load(), "every attacker connection reached the controller")

	a.checkServing(t)
	a.checkMemory(t, "500 connections at their cap")

	for _, s := range sessions {
		s.Close()
	}
	// The budget is released: a real enrolment works again.
	require.Eventually(t, func() bool {
		out, err := exec.Command(filepath.Join(a.c.Bin, "ferry-agent"), "enroll", "--controller", a.c.Addr,
			"--token", a.c.Token(), "--name", "later", "--state-dir", filepath.Join(t.TempDir(), "later")).CombinedOutput()
		if err != nil {
			t.Logf("enrol after the attack: %v: %s", err, out)
		}
		return err == nil
	}, time.Minute, time.Second, "enrolment after the attack")
}
