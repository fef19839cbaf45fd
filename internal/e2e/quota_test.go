package e2e

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMachineQuotaPausesOnlyThatMachine: with --machine-quota 20MiB, a
// machine whose points stored 24 MiB of incompressible data gets no more
// points and the health reason "machine over its storage quota", while
// another machine of the same agent goes on; with a larger quota it
// resumes, and its next point is the image as the test wrote it.
func TestMachineQuotaPausesOnlyThatMachine(t *testing.T) {
	c := StartController(t, "--machine-quota", "20MiB")
	EnrollAgent(t, c, c.Addr, "src")
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big.img"), filepath.Join(dir, "small.img")
	want := make([]byte, 16<<20)
	_, _ = rand.Read(want)
	require.NoError(t, os.WriteFile(big, want, 0o600))
	other := make([]byte, 2<<20)
	_, _ = rand.Read(other)
	require.NoError(t, os.WriteFile(small, other, 0o600))
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "big", "--agent", "src", "--disk", "d="+big, "--policy", "fast")
	c.MustFerry("protect", "small", "--agent", "src", "--disk", "d="+small, "--policy", "fast")
	p1 := c.WaitPoint("big", 0, time.Minute)

	// 8 MiB more: under the quota when the cycle starts, over it after.
	_, _ = rand.Read(want[0 : 8<<20])
	writeAt(t, big, 0, want[0:8<<20])
	c.WaitPoint("big", p1.ID, time.Minute)
	var used int64
	for _, p := range c.Points("big") {
		used += p.Bytes
	}
	t.Logf("machine big stored %d MiB in %d points", used>>20, len(c.Points("big")))
	require.GreaterOrEqual(t, used, int64(20<<20), "the precondition: over the quota")

	_, _ = rand.Read(want[8<<20 : 12<<20])
	writeAt(t, big, 8<<20, want[8<<20:12<<20])
	require.Eventually(t, func() bool { return strings.Contains(healthReason(t, c, "big"), "machine over its storage quota") },
		30*time.Second, 200*time.Millisecond)
	require.NotContains(t, healthReason(t, c, "small"), "quota")
	// The other machine goes on while big is held.
	s := c.Points("small")
	held := c.Points("big")
	_, _ = rand.Read(other)
	writeAt(t, small, 0, other)
	c.WaitPoint("small", s[len(s)-1].ID, time.Minute)
	require.Equal(t, held, c.Points("big"), "no point of the machine over its quota")
	last := held[len(held)-1]

	// A larger quota: replication resumes by itself.
	c.extra = []string{"--machine-quota", "1GiB"}
	c.Restart()
	require.Eventually(t, func() bool {
		ps := c.Points("big")
		if ps[len(ps)-1].ID == last.ID {
			return false
		}
		got, err := os.ReadFile(filepath.Join(c.Export("big", ps[len(ps)-1].ID), "d.raw"))
		return err == nil && string(got) == string(want)
	}, 2*time.Minute, time.Second, "big did not resume")
	require.NotContains(t, healthReason(t, c, "big"), "quota")
}

// writeAt writes b at off of the file at path in place (no truncation: an
// agent reading meanwhile never sees an empty disk).
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}
