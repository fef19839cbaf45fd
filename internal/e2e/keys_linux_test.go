package e2e

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// agentKey runs `ferry-agent key ARGS --state-dir` of agent a.
func agentKey(t *testing.T, a *Agent, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(a.Bin, "ferry-agent"), append(append([]string{"key"}, args...), "--state-dir", a.StateDir)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "ferry-agent key %v: %s", args, out)
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

// TestEncryptedStagingWithAgentKey: an encrypted repository (the
// controller holds only the public key) whose recovery agent holds the
// private key is staged — the staged replica equals the image the test
// kept — and its failover, without --key-file, moves only the changed
// blocks (counted on the recovery agent's link at a proxy) and starts the
// machine on disks equal to the test's copy. `key install` refuses the
// public key and a non-key file, leaving nothing behind. A second site
// whose agent holds another repository's key is never staged, and its
// failover is refused before anything is touched, naming the wrong key.
func TestEncryptedStagingWithAgentKey(t *testing.T) {
	bin := Binaries(t)
	keys, otherKeys := t.TempDir(), t.TempDir()
	var fp string
	for _, d := range []string{keys, otherKeys} {
		out, err := execOut(bin+"/ferry", "keys", "generate", "--out", d, "--json")
		require.NoError(t, err, out)
		var gen struct{ Fingerprint string }
		require.NoError(t, json.Unmarshal([]byte(out), &gen), out)
		if fp == "" {
			fp = gen.Fingerprint
		}
	}
	require.Len(t, fp, 64)
	c := StartController(t, "--public-key", filepath.Join(keys, "repository.pub"))
	EnrollAgent(t, c, c.Addr, "src")
	proxy := proxyTo(t, c.Addr)
	site := AddSite(t, c, proxy.Addr(), "dr")
	wrong := AddSite(t, c, c.Addr, "dr2")
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")

	// key install refuses what is not a private key, and keeps nothing.
	junk := filepath.Join(t.TempDir(), "junk")
	require.NoError(t, os.WriteFile(junk, []byte("hello\n"), 0o600))
	for file, why := range map[string]string{filepath.Join(keys, "repository.pub"): "public key", junk: "not a repository private key"} {
		out, code := agentKey(t, site.Agent, "install", "--key-file", file)
		require.Equal(t, 1, code, out)
		require.Contains(t, out, why)
		_, err := os.Stat(filepath.Join(site.Agent.StateDir, "repository.key"))
		require.ErrorIs(t, err, os.ErrNotExist, "a refused key was installed")
	}
	out, code := agentKey(t, site.Agent, "install")
	require.Equal(t, 2, code, "--key-file is required: %s", out)
	// Installed while the agent runs: it reads the key when asked.
	out, code = agentKey(t, site.Agent, "install", "--key-file", filepath.Join(keys, "repository.key"))
	require.Zero(t, code, out)
	require.Contains(t, out, fp)
	fi, err := os.Stat(filepath.Join(site.Agent.StateDir, "repository.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	out, code = agentKey(t, wrong.Agent, "install", "--key-file", filepath.Join(otherKeys, "repository.key"))
	require.Zero(t, code, out)

	const size = 32 << 20
	dir := t.TempDir()
	power := filepath.Join(dir, "power")
	require.NoError(t, os.WriteFile(power, []byte("stopped\n"), 0o644))
	img := filepath.Join(dir, "sec.img")
	kept := make([]byte, size)
	_, err = rand.Read(kept)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(img, kept, 0o644))
	c.MustFerry("protect", "sec", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr", "--status", "cat "+power)
	p1 := c.WaitPoint("sec", 0, 3*time.Minute)
	site.waitStaged(t, "sec", p1.ID)
	requireSameFileBytes(t, kept, site.StagedPath("sec", "d"))

	// Change 8 blocks of 64 KiB (one 4 KiB write in each); the test keeps
	// the image's bytes in step.
	const blocks = 8
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	require.NoError(t, err)
	for i := range blocks {
		off := int64(i)*(size/blocks) + 12345
		w := kept[off : off+4096]
		_, err = rand.Read(w)
		require.NoError(t, err)
		_, err = f.WriteAt(w, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	_, down0 := proxy.Bytes()
	before := restoredBytes(site.Agent.Proc.Output())
	j := c.runJob(t, 0, "failover", "sec")
	require.Greater(t, j.Machines[0].PointID, p1.ID, "a fresh point with the writes")
	_, down1 := proxy.Bytes()
	written := restoredBytes(site.Agent.Proc.Output()) - before
	const changed = blocks * 64 << 10
	t.Logf("failover of an encrypted %d MiB disk, %d blocks changed (%d KiB): %d KiB to the recovery agent, %d KiB written there",
		size>>20, blocks, changed>>10, (down1-down0)>>10, written>>10)
	require.Equal(t, int64(changed), written, "the recovery site wrote exactly the changed blocks")
	require.Less(t, down1-down0, int64(changed)+512<<10, "the link carried the changed blocks, not the disk")
	requireSameFileBytes(t, kept, site.Hyp.Disks(t, "sec")[0])

	// The other site's agent holds another repository's key.
	img2 := filepath.Join(dir, "other.img")
	makeImage(t, img2, 3, 8<<20)
	c.MustFerry("protect", "other", "--agent", "src", "--disk", "d="+img2, "--policy", "p", "--target", "dr2", "--status", "cat "+power)
	c.WaitPoint("other", 0, 3*time.Minute)
	j = c.runJob(t, 3, "failover", "other")
	require.Equal(t, "failed", j.step("prerequisites"))
	require.Contains(t, j.Error, "another repository key")
	require.Equal(t, "absent", wrong.Hyp.State("other"), "nothing was started")
	_, err = os.Stat(filepath.Join(wrong.Dir, "other"))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing was staged or touched at the wrong-key site")
}
