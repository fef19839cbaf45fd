package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/session"
)

// enroll runs ferry-agent enroll and returns its output and exit code.
func enroll(t *testing.T, c *Controller, token, name string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.Bin, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", token,
		"--name", name, "--state-dir", filepath.Join(t.TempDir(), name))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	require.NoError(t, err)
	return string(out), 0
}

func agentNames(t *testing.T, c *Controller) []string {
	var agents []struct {
		Name string `json:"name"`
	}
	c.JSON(&agents, "agents", "list")
	var out []string
	for _, a := range agents {
		out = append(out, a.Name)
	}
	return out
}

func TestTokenRefusals(t *testing.T) {
	c := StartController(t)

	tok := c.Token()
	_, code := enroll(t, c, tok, "first")
	require.Equal(t, 0, code)
	out, code := enroll(t, c, tok, "second")
	require.NotEqual(t, 0, code)
	require.Contains(t, out, "token already used")

	short := c.Token("--ttl", "1s")
	time.Sleep(1100 * time.Millisecond) // the token must really expire
	out, code = enroll(t, c, short, "late")
	require.NotEqual(t, 0, code)
	require.Contains(t, out, "expired")

	revoked := c.Token()
	id := strings.Split(revoked, ".")[1]
	c.MustFerry("tokens", "revoke", id)
	out, code = enroll(t, c, revoked, "unwanted")
	require.NotEqual(t, 0, code)
	require.Contains(t, out, "revoked")

	out, code = enroll(t, c, "f1.nonsense", "garbled")
	require.NotEqual(t, 0, code)
	require.Contains(t, out, "malformed enrolment token")

	require.Equal(t, []string{"first"}, agentNames(t, c), "nothing but the first enrolment is stored")
}

func TestRevokedAgentIsRefused(t *testing.T) {
	c := StartController(t)
	a := EnrollAgent(t, c, c.Addr, "doomed")
	c.MustFerry("agents", "revoke", "doomed", "--force")
	// The session ends and every reconnection is refused.
	require.Eventually(t, func() bool {
		var agents []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
			Revoked   bool   `json:"revoked"`
		}
		c.JSON(&agents, "agents", "list")
		return len(agents) == 1 && !agents[0].Connected && agents[0].Revoked
	}, 30*time.Second, 100*time.Millisecond)
	a.Proc.WaitOutput(regexp.MustCompile(regexp.QuoteMeta("certificate refused")), 60*time.Second)
	img := filepath.Join(t.TempDir(), "d.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o644))
	r := c.Ferry("protect", "m", "--agent", "doomed", "--disk", img)
	require.Equal(t, 1, r.Code)
	require.Contains(t, r.Stderr, "revoked")
}

func TestForeignCertificateIsRefused(t *testing.T) {
	a := StartController(t)
	b := StartController(t)
	stateDir := filepath.Join(t.TempDir(), "foreign")
	out, err := exec.Command(filepath.Join(b.Bin, "ferry-agent"), "enroll", "--controller", b.Addr, "--token", b.Token(),
		"--name", "foreign", "--state-dir", stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := agent.LoadState(stateDir)
	require.NoError(t, err)
	conf := st.TLSConfig()
	conf.InsecureSkipVerify = true // reach A's TLS layer: it is A that must refuse
	conf.VerifyPeerCertificate = nil
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = session.Dial(ctx, a.Addr, session.Config{TLS: conf, Name: "agent"})
	require.Error(t, err, "a certificate from another CA must not open a session")
	t.Logf("refused with: %v", err)
	require.Empty(t, agentNames(t, a))
}

func TestProtectMissingPathIsRefused(t *testing.T) {
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	missing := filepath.Join(t.TempDir(), "no-such.img")
	r := c.Ferry("protect", "ghost", "--agent", "src", "--disk", "root="+missing)
	require.Equal(t, 1, r.Code)
	require.Contains(t, r.Stderr, missing)
	require.Contains(t, r.Stderr, "no such file")
	var ms []any
	c.JSON(&ms, "machines", "list")
	require.Empty(t, ms, "a refused protect stores nothing")

	r = c.Ferry("protect", "ghost", "--agent", "nobody", "--disk", "root="+missing)
	require.Equal(t, 1, r.Code)
	require.Contains(t, r.Stderr, "nobody")
	r = c.Ferry("protect", "ghost", "--agent", "src")
	require.Equal(t, 2, r.Code, "a missing --disk is a usage error")
}

// TestMalformedFrameDropsOnlyThatSession: a client with a valid certificate
// sends garbage on a data stream: its session drops; the controller keeps
// serving the other agent, whose replication goes on.
func TestMalformedFrameDropsOnlyThatSession(t *testing.T) {
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "good")
	img := filepath.Join(t.TempDir(), "d.img")
	makeImage(t, img, 41, 16<<20)
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm", "--agent", "good", "--disk", "d="+img, "--policy", "fast")
	p1 := c.WaitPoint("vm", 0, time.Minute)

	stateDir := filepath.Join(t.TempDir(), "rogue")
	out, err := exec.Command(filepath.Join(c.Bin, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", c.Token(),
		"--name", "rogue", "--state-dir", stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := agent.LoadState(stateDir)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := session.Dial(ctx, c.Addr, session.Config{TLS: st.TLSConfig(), Name: "agent"})
	require.NoError(t, err)
	defer sess.Close()
	s, err := sess.Open(ctx, protocol.KindData)
	require.NoError(t, err)
	// A frame header announcing 2 GiB, then junk. The controller may drop
	// the session before this write returns, and then it fails ("closed
	// by the peer"): what proves the drop is the session ending below.
	_, err = s.Write([]byte{0x7f, 0xff, 0xff, 0xff, 0x03, 1, 2, 3, 4, 5})
	if err != nil {
		t.Logf("the write of the malformed frame returned %v", err)
	}
	select {
	case <-sess.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the misbehaving session was not dropped")
	}
	c.WaitPoint("vm", p1.ID, time.Minute) // the good agent goes on
	require.Contains(t, c.MustFerry("verify"), "verified")
}

// TestEmptiedDiskMakesNoPoint: an image truncated to nothing while it is
// replicated makes no point (a failover could not start a machine from
// it); the agent says why, and points resume once the disk has data.
func TestEmptiedDiskMakesNoPoint(t *testing.T) {
	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "p", "--rp-every", "1s")
	img := filepath.Join(t.TempDir(), "m.img")
	makeImage(t, img, 9, 8<<20)
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p1 := c.WaitPoint("m", 0, time.Minute)
	require.NoError(t, os.Truncate(img, 0))
	src.Proc.WaitOutput(regexp.MustCompile(`disk d \(\S+\) is empty \(size 0\)`), 30*time.Second)
	before := c.Points("m")
	time.Sleep(2 * time.Second)
	require.Equal(t, len(before), len(c.Points("m")), "no point while the disk is empty")
	for _, p := range before {
		got, err := os.ReadFile(filepath.Join(c.Export("m", p.ID), "d.raw"))
		require.NoError(t, err)
		require.Len(t, got, 8<<20, "point %d keeps the disk", p.ID)
	}

	// The data comes back whole (renamed into place), so the next point
	// holds all of it.
	want := makeImage(t, img+".new", 10, 4<<20)
	require.NoError(t, os.Rename(img+".new", img))
	p := c.WaitPoint("m", before[len(before)-1].ID, time.Minute)
	require.Greater(t, p.ID, p1.ID)
	got, err := os.ReadFile(filepath.Join(c.Export("m", p.ID), "d.raw"))
	require.NoError(t, err)
	require.True(t, string(want) == string(got), "the point after the disk came back holds its data")
}
