package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
)

// previousRelease is the last commit whose agent and controller knew only
// the wire codecs none and zstd, and stored every chunk the controller
// built as zstd: the build an upgrade starts from.
const previousRelease = "0f08cbf0b823aa135e00f46e43cb039618290ab7"

// buildAt builds ferry and ferry-agent from a commit of this repository's
// history into a directory of their own. Without the history (a shallow
// clone, an exported tree) there is nothing to build from: the test skips
// and says so, in CI too.
func buildAt(t *testing.T, commit string) string {
	t.Helper()
	root := moduleRoot()
	if out, err := exec.Command("git", "-C", root, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		t.Skipf("skipping: commit %s is not in this checkout's history, so the previous release cannot be built (%v: %s)", commit[:7], err, strings.TrimSpace(string(out)))
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	require.NoError(t, os.Mkdir(src, 0o755))
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", root, commit, src))
	out, err := archive.CombinedOutput()
	require.NoError(t, err, "git archive %s: %s", commit[:7], out)
	bin := filepath.Join(dir, "bin")
	for _, b := range []struct{ name, pkg, cgo string }{{"ferry", "./cmd/ferry", "1"}, {"ferry-agent", "./cmd/ferry-agent", "0"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b.name), b.pkg)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "build %s at %s: %s", b.name, commit[:7], out)
	}
	return bin
}

var pointMadeS2 = regexp.MustCompile(`"point made".*s2_bytes=([0-9]+)`)

// TestMixedVersionsReplicate: during an upgrade the controller goes
// first. An agent of the previous release replicates to the new
// controller (sending none and zstd), and the new pair uses S2; both make
// points that export byte-exact against copies of the source the test
// kept, through a delta of small writes (patches) as well as the initial
// sync. A new agent against a controller of the previous release is
// refused: TestNewAgentRefusesAnOlderController.
func TestMixedVersionsReplicate(t *testing.T) {
	testenv.RequireRoot(t)
	old, cur := buildAt(t, previousRelease), Binaries(t)
	for _, tc := range []struct {
		name            string
		ctlBin, agntBin string
		newAgent, s2    bool // the agent logs its codecs; S2 only with both new
	}{
		{"old agent, new controller", cur, old, false, false},
		{"new agent, new controller", cur, cur, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testenv.MountLoop(t, "xfs", 1<<30)
			c := startControllerBin(t, tc.ctlBin)
			a := enrollAgentBin(t, c, tc.agntBin, "", c.Addr, "src")
			c.MustFerry("policies", "create", "p", "--rp-every", "1s")
			const size = 32 << 20
			img := filepath.Join(mnt, "m.img")
			makeImage(t, img, 41, size)
			initial := keepCopy(t, img)
			c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "p")
			p0 := c.WaitPoint("m", 0, 3*time.Minute)
			requireSameFile(t, initial, filepath.Join(c.Export("m", p0.ID), "d.raw"))

			require.NoError(t, workload.Apply(img, 5, workload.Delta(5, size, 0.02)))
			after := time.Now()
			delta := keepCopy(t, img)
			var p1 Point
			require.Eventually(t, func() bool {
				for _, p := range c.Points("m") {
					if p.Time.After(after) {
						p1 = p
						return true
					}
				}
				return false
			}, 2*time.Minute, 100*time.Millisecond, "no point after the delta")
			requireSameFile(t, delta, filepath.Join(c.Export("m", p1.ID), "d.raw"))

			if tc.newAgent {
				var s2 int64
				for _, m := range pointMadeS2.FindAllStringSubmatch(a.Proc.Output(), -1) {
					var n int64
					fmt.Sscan(m[1], &n)
					s2 += n
				}
				if tc.s2 {
					require.Positive(t, s2, "a new agent on a new controller sends S2 on loopback")
				} else {
					require.Zero(t, s2, "a controller that does not offer S2 gets none")
				}
			}
		})
	}
}

// TestNewAgentRefusesAnOlderController: an agent of this build, enrolled
// against a controller of the previous release, is refused at the
// handshake, and says why and what to do.
func TestNewAgentRefusesAnOlderController(t *testing.T) {
	old, cur := buildAt(t, previousRelease), Binaries(t)
	c := startControllerBin(t, old)
	out, err := exec.Command(filepath.Join(cur, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", c.Token(),
		"--name", "new", "--state-dir", filepath.Join(t.TempDir(), "agent")).CombinedOutput()
	require.Error(t, err, "enrol of a new agent with an old controller: %s", out)
	require.Contains(t, string(out), "protocol version mismatch: agent speaks 3–3, controller speaks 1–2")
	require.Contains(t, string(out), "the controller is of an older release than this build: upgrade it first")
}
