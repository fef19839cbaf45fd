package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDryRunAndMalformedPointCreateNoJob: `--point yesterday` is a usage
// error (exit 2) before anything is created; `--dry-run` prints the point
// the failover would use and records no job; the machine stays protected.
func TestDryRunAndMalformedPointCreateNoJob(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	_, p := f.protect(t, "m", 8<<20)

	r := f.c.Ferry("failover", "m", "--point", "yesterday")
	require.Equal(t, 2, r.Code, "a malformed --point is a usage error: %s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, "yesterday")
	r = f.c.Ferry("change-point", "m", "--point", "yesterday")
	require.Equal(t, 2, r.Code, "%s %s", r.Stdout, r.Stderr)

	r = f.c.Ferry("failover", "m", "--dry-run", "--point", "latest-processed")
	require.Equal(t, 0, r.Code, "%s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stdout, fmt.Sprintf("would use point %d", p.ID))
	r = f.c.Ferry("failover", "m", "--dry-run")
	require.Equal(t, 0, r.Code, "%s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stdout, fmt.Sprintf("point %d", p.ID), "latest names the newest stored point")

	var jobs []Job
	f.c.JSON(&jobs, "jobs", "list")
	require.Empty(t, jobs, "neither the malformed point nor the dry runs recorded a job")
	var m struct{ State string }
	f.c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "protected", m.State)
	require.Equal(t, "absent", f.site.Hyp.State("m"), "nothing was started")
}

// TestProtectRefusesANameWhoseLiveDisksRun: a machine failed over and
// committed keeps running at the recovery site on DIR/M/live. Unprotecting
// the name and protecting a new machine under it, as a new user would, is
// refused: a failover of the new machine would overwrite the disks of the
// one still running. The running machine's disks are untouched.
func TestProtectRefusesANameWhoseLiveDisksRun(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	f.protect(t, "app", 8<<20)
	f.c.runJob(t, 0, "failover", "app", "--point", "latest-processed")
	f.c.runJob(t, 0, "commit", "app", "--force")
	require.Equal(t, "running", f.site.Hyp.State("app"))
	live := f.site.Hyp.Disks(t, "app")[0]
	before, err := os.ReadFile(live)
	require.NoError(t, err)
	f.c.MustFerry("unprotect", "app")

	img := filepath.Join(f.mnt, "other.img")
	makeImage(t, img, 99, 8<<20)
	r := f.c.Ferry("protect", "app", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
	require.Equal(t, 1, r.Code, "protecting over a running machine's live disks is refused: %s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, "live disks")
	after, err := os.ReadFile(live)
	require.NoError(t, err)
	require.True(t, string(before) == string(after), "the running machine's disks are untouched")
	var ms []struct{ Name string }
	f.c.JSON(&ms, "machines", "list")
	require.Empty(t, ms, "nothing was protected")
}
