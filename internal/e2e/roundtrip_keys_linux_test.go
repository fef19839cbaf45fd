package e2e

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// TestRoundTripEncrypted: an encrypted repository (the controller holds
// only the public key). Re-protect is refused, with nothing changed, while
// the home agent holds no key of it; once both agents hold the key the
// round trip stages in both directions — failover, commit, writes at the
// recovery site, reprotect, failback — and the home disk equals the
// writer's copy.
func TestRoundTripEncrypted(t *testing.T) {
	testenv.RequireRoot(t)
	bin := Binaries(t)
	keys := t.TempDir()
	out, err := execOut(bin+"/ferry", "keys", "generate", "--out", keys, "--json")
	require.NoError(t, err, out)
	var gen struct{ Fingerprint string }
	require.NoError(t, json.Unmarshal([]byte(out), &gen), out)

	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	r := &roundTrip{}
	r.c = StartController(t, "--public-key", filepath.Join(keys, "repository.pub"))
	r.home = EnrollAgent(t, r.c, r.c.Addr, "home")
	siteAgent := EnrollAgent(t, r.c, r.c.Addr, "dr-agent")
	out, code := agentKey(t, siteAgent, "install", "--key-file", filepath.Join(keys, "repository.key"))
	require.Zero(t, code, out)
	r.site = &Site{Name: "dr", Dir: filepath.Join(mnt, "dr"), Hyp: NewHypervisor(t), Agent: siteAgent}
	require.NoError(t, os.MkdirAll(r.site.Dir, 0o700))
	r.c.MustFerry(append([]string{"targets", "add", "dr", "--agent", siteAgent.Name, "--dir", r.site.Dir}, r.site.Hyp.Flags()...)...)
	r.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	r.homeHyp = NewHypervisor(t)
	const size = 16 << 20
	r.img = filepath.Join(mnt, "vm.img")
	r.mirror = make([]byte, size)
	_, err = rand.Read(r.mirror)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(r.img, r.mirror, 0o644))
	r.rng = newRoundTrip0Rand()
	r.c.MustFerry(append([]string{"protect", "vm", "--agent", "home", "--disk", "d=" + r.img, "--policy", "p", "--target", "dr"}, r.homeHyp.Flags()...)...)
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm", p.ID)

	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.requireMirror(t, live, "failed over")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.write(t, live, 60)

	j := r.c.runJob(t, 3, "reprotect", "vm", "--stop-source")
	require.Contains(t, j.Error, "home agent holds no key")
	require.Contains(t, j.Error, "ferry-agent key install")
	r.requireState(t, "committed", "recovery", "forward")

	out, code = agentKey(t, r.home, "install", "--key-file", filepath.Join(keys, "repository.key"))
	require.Zero(t, code, out)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect (encrypted)")
	r.write(t, live, 30)
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after failback (encrypted)")
	r.requireState(t, "back-home", "home", "forward")
}
