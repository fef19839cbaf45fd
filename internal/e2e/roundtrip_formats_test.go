package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// newRoundTripFormat is newRoundTrip with a recovery site whose
// hypervisor wants format (targets add --format): failover converts the
// live disks and the machine runs on the converted file. The site's
// directory is on a filesystem of type siteFS: the home disk's XFS
// (reflink views at both sites), or a filesystem of its own.
func newRoundTripFormat(t *testing.T, size int64, format, siteFS string) *roundTrip {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "qemu-img")
	testenv.RequireTool(t, "qemu-io")
	mnt := testenv.MountLoop(t, "xfs", 2<<30)
	r := &roundTrip{rng: newRoundTrip0Rand()}
	r.c = StartController(t)
	r.home = EnrollAgent(t, r.c, r.c.Addr, "home")
	siteAgent := EnrollAgent(t, r.c, r.c.Addr, "dr-agent")
	siteMnt := mnt
	switch siteFS {
	case "xfs":
	case "ramfs", "tmpfs":
		siteMnt = testenv.MountMemory(t, siteFS)
	default:
		siteMnt = testenv.MountLoop(t, siteFS, 1<<30)
	}
	r.site = &Site{Name: "dr", Dir: filepath.Join(siteMnt, "dr"), Hyp: NewHypervisor(t), Agent: siteAgent}
	require.NoError(t, os.MkdirAll(r.site.Dir, 0o700))
	r.c.MustFerry(append([]string{"targets", "add", "dr", "--agent", siteAgent.Name, "--dir", r.site.Dir, "--format", format}, r.site.Hyp.Flags()...)...)
	r.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	r.homeHyp = NewHypervisor(t)
	r.img = filepath.Join(mnt, "vm.img")
	r.mirror = makeImage(t, r.img, 29, size)
	r.c.MustFerry(append([]string{"protect", "vm", "--agent", "home", "--disk", "d=" + r.img, "--policy", "p", "--target", "dr"}, r.homeHyp.Flags()...)...)
	r.setHome(t, "running")
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm", p.ID)
	return r
}

// writeImage makes n random 4 KiB writes into the image at path through
// qemu-io (QEMU's own block layer, as a guest's writes would go), every
// eighth of them a zero write (qcow2 zero clusters, VHDX zero blocks),
// and the same writes into the mirror.
func (r *roundTrip) writeImage(t *testing.T, path, format string, n int) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-f", format}
	buf := make([]byte, 4096)
	for i := range n {
		off := r.rng.Int64N(int64(len(r.mirror))/4096) * 4096
		if i%8 == 7 {
			args = append(args, "-c", fmt.Sprintf("write -q -z %d 4096", off))
			clear(r.mirror[off : off+4096])
			continue
		}
		for k := range buf {
			buf[k] = byte(r.rng.Uint32())
		}
		src := filepath.Join(dir, fmt.Sprintf("w%d", i))
		require.NoError(t, os.WriteFile(src, buf, 0o600))
		args = append(args, "-c", fmt.Sprintf("write -q -s %s %d 4096", src, off))
		copy(r.mirror[off:], buf)
	}
	out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput()
	require.NoError(t, err, "qemu-io: %s", out)
}

// containerReadBytes is how much an agent read from its source disks'
// container files since it started (its "point made" log lines).
func containerReadBytes(a *Agent) int64 {
	var n int64
	for _, m := range containerRead.FindAllStringSubmatch(a.Proc.Output(), -1) {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		n = max(n, v)
	}
	return n
}

// requireImageMirror checks an image file of format against the test's
// own copy: `qemu-img check` clean and `qemu-img compare` equal (QEMU reads
// the image, not Ferry).
func (r *roundTrip) requireImageMirror(t *testing.T, path, format, what string) {
	t.Helper()
	require.True(t, strings.HasSuffix(path, "."+format), "%s: the machine runs on its %s copy: %s", what, format, path)
	out, err := exec.Command("qemu-img", "check", "-f", format, path).CombinedOutput()
	require.NoError(t, err, "%s: qemu-img check %s: %s", what, path, out)
	want := filepath.Join(t.TempDir(), "mirror.raw")
	require.NoError(t, os.WriteFile(want, r.mirror, 0o600))
	out, err = exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, want, path).CombinedOutput()
	require.NoError(t, err, "%s: qemu-img compare with the writer's copy: %s", what, out)
}

// testRoundTripFormat: the full round trip with a recovery site of
// format: protect → failover (the machine runs on the converted file) →
// commit → writes into that file → reprotect (the recovery agent reads
// the converted file as the machine's source) → more writes there →
// failback (home disk = the writer's copy) → writes at home → reprotect →
// failover again (a fresh conversion holding every write) → a second
// round trip from there. Each step's active disk is checked against the
// test's own copy.
func testRoundTripFormat(t *testing.T, format string) {
	const size = 32 << 20
	r := newRoundTripFormat(t, size, format, "xfs")

	r.write(t, r.img, 40)
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.requireImageMirror(t, live, format, "failed over")
	r.c.runJob(t, 0, "commit", "vm", "--force")

	r.writeImage(t, live, format, 160)
	r.requireImageMirror(t, live, format, "written at the recovery site")
	j := r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	require.NotContains(t, strings.Join(j.Machines[0].Notes, " "), "inconsistent", "reflink views at the recovery site give crash-consistent points")
	r.requireMirror(t, r.img, "home disk after re-protect")
	r.requireState(t, "reverse-protected", "recovery", "reverse")

	// The failback's final cycle finds the changes in the image's own
	// tables (disk.ChangedRanges over the reflink views' extent diff): it
	// reads a small part of the container, not every allocated block.
	r.writeImage(t, live, format, 80)
	before := containerReadBytes(r.site.Agent)
	r.c.runJob(t, 0, "failback", "vm")
	read := containerReadBytes(r.site.Agent) - before
	st, err := os.Stat(live)
	require.NoError(t, err)
	t.Logf("failback's final cycle read %d bytes of the %d-byte %s file", read, st.Size(), format)
	require.Less(t, read, st.Size()/2, "the final cycle reads the changed ranges of the image, not all of it")
	r.requireMirror(t, r.img, "home disk after failback")
	require.Equal(t, "running", r.homeHyp.State("vm"), "failback started the machine at home")
	require.Equal(t, "stopped", r.site.Hyp.State("vm"))
	r.requireState(t, "back-home", "home", "forward")
	// Ferry only read the image the machine ran on.
	r.requireImageMirror(t, live, format, "the recovery image after failback")

	r.write(t, r.img, 60)
	r.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	// The staged replica holds the failback's point in its raw files;
	// the copy the machine ran on is gone (a failover converts afresh).
	for _, f := range r.site.Files(t) {
		require.False(t, strings.HasSuffix(f, "."+format), "a stale %s copy stays at the recovery site: %s", format, f)
	}
	r.c.runJob(t, 0, "failover", "vm")
	live = r.site.Hyp.Disks(t, "vm")[0]
	r.requireImageMirror(t, live, format, "failed over again after the round trip")

	// A second round trip from the fresh conversion: the recovery agent's
	// block map and views of the first one do not hold it.
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.writeImage(t, live, format, 50)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after the second re-protect")
	r.writeImage(t, live, format, 30)
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after the second failback")
	r.requireState(t, "back-home", "home", "forward")
}

// TestRoundTripQCOW2RecoverySite: the round trip through a recovery site
// whose hypervisor runs qcow2 disks.
func TestRoundTripQCOW2RecoverySite(t *testing.T) { testRoundTripFormat(t, "qcow2") }

// TestRoundTripVHDXRecoverySite: the round trip through a recovery site
// whose hypervisor runs VHDX disks.
func TestRoundTripVHDXRecoverySite(t *testing.T) { testRoundTripFormat(t, "vhdx") }

// TestReprotectWarnsInconsistentRecoverySite: a qcow2 recovery site on
// ramfs (no reflink, no snapshot view of the image, timestamps too coarse
// for a quiet-file view): the recovery agent reads the running machine's
// qcow2 file directly, so re-protect's first reverse point is
// inconsistent and the job warns so in its notes. The planned failback
// stops the machine before its final cycle: that point is
// crash-consistent, and the home disk equals the writer's copy.
func TestReprotectWarnsInconsistentRecoverySite(t *testing.T) {
	r, live, j, p := reprotectFromQCOW2On(t, "ramfs")
	require.Equal(t, "inconsistent", p.Consistency, "the recovery site on ramfs reads the running machine's image directly")
	require.Equal(t, "direct-read", p.Method, "points list says how the point was made")
	require.Contains(t, p.Reason, "no reflink or snapshot view on this filesystem (ramfs)", "and why it is inconsistent")
	require.Contains(t, p.Reason, "timestamps on this filesystem are coarser than the writes", "and why it is not quiet-file")
	require.Contains(t, strings.Join(j.Machines[0].Notes, " "), "can only give inconsistent points", "re-protect warns about the recovery site's views")

	r.writeImage(t, live, "qcow2", 40)
	j = r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after failback")
	p = pointOf(t, r.c, "vm", j.Machines[0].PointID)
	require.Equal(t, "crash-consistent", p.Consistency, "the final cycle reads the stopped machine")
	require.Equal(t, "powered-off", p.Method)
}

// TestReprotectQuietRecoverySite: the same on ext4, whose timestamps are
// fine-grained: nothing writes the failed-over machine's qcow2 file while
// re-protect's cycle reads it, so the reverse point is quiet-file,
// crash-consistent, and the job gives no warning.
func TestReprotectQuietRecoverySite(t *testing.T) {
	_, _, j, p := reprotectFromQCOW2On(t, "ext4")
	require.Equal(t, "crash-consistent", p.Consistency, "reason: %s", p.Reason)
	require.Equal(t, "quiet-file", p.Method)
	require.NotContains(t, strings.Join(j.Machines[0].Notes, " "), "can only give inconsistent points")
}

// pointOf is a machine's point id as `points list` shows it.
// reprotectFromQCOW2On fails machine vm over to a recovery site whose
// qcow2 disks sit on siteFS, commits, writes the running disk there and
// re-protects: it returns the rig, the recovery disk, the re-protect job
// and its reverse point, the home disk checked against the writes.
func reprotectFromQCOW2On(t *testing.T, siteFS string) (*roundTrip, string, Job, Point) {
	t.Helper()
	const size = 16 << 20
	r := newRoundTripFormat(t, size, "qcow2", siteFS)
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.writeImage(t, live, "qcow2", 100)
	j := r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect")
	return r, live, j, pointOf(t, r.c, "vm", j.Machines[0].PointID)
}

func pointOf(t *testing.T, c *Controller, machine string, id int64) Point {
	t.Helper()
	for _, p := range c.Points(machine) {
		if p.ID == id {
			return p
		}
	}
	t.Fatalf("machine %s has no point %d", machine, id)
	return Point{}
}

// TestRoundTripVMDKRecoverySite: the round trip through a recovery site
// whose hypervisor runs (monolithicSparse) VMDK disks.
func TestRoundTripVMDKRecoverySite(t *testing.T) { testRoundTripFormat(t, "vmdk") }

// TestForwardReprotectFromQCOW2SurvivesControllerKill: the re-protect
// after a failback from a qcow2 recovery site moves the raw files from
// their own point to the final one; `ferry serve` is SIGKILLed mid-move
// (failpoint move.mid: the staged set's state says moving_to). After the
// restart the job finishes by itself, and a failover then runs on a
// fresh qcow2 copy equal to the test's copy.
func TestForwardReprotectFromQCOW2SurvivesControllerKill(t *testing.T) {
	const size = 32 << 20
	r := newRoundTripFormat(t, size, "qcow2", "xfs")
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.writeImage(t, live, "qcow2", 200)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.writeImage(t, live, "qcow2", 100)
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after failback")

	s := &crashSetup{c: r.c, site: r.site}
	s.restartArmed(t, "move.mid#1") // its first hit
	id := s.startJob(t, "reprotect", "vm", "--json")
	s.waitKilledAt(t, "move.mid#1")
	b, err := os.ReadFile(filepath.Join(r.site.Dir, "vm", "staged", "state.json"))
	require.NoError(t, err)
	var st struct {
		MovingTo int64 `json:"moving_to"`
	}
	require.NoError(t, json.Unmarshal(b, &st))
	require.NotZero(t, st.MovingTo, "the controller died mid-move of the staged set: %s", b)
	t.Setenv(failpointEnv, "")
	r.c.Restart()
	j := s.waitJob(t, id)
	require.Equal(t, "succeeded", j.State, "job %s: %s", j.ID, j.Error)
	r.requireState(t, "protected", "home", "forward")

	r.c.runJob(t, 0, "failover", "vm")
	r.requireImageMirror(t, r.site.Hyp.Disks(t, "vm")[0], "qcow2", "failed over after the interrupted re-protect")
}

// TestReverseSourceReadsARawRecoveryDiskAsRaw: on a raw recovery site the
// guest owns every byte of its disk file, the first sector included. A
// guest that writes a qcow2 image at the start of its disk (nested
// virtualization does; so can a hostile guest), one whose backing file
// is a file of the recovery host, must not make the recovery agent read
// its disk as that qcow2: the home disk after re-protect equals the
// guest's raw bytes and holds nothing of the host's file. (The home
// side's in-place writer still detects the home disk's format from its
// magic, so a failback of this disk is refused there: docs/failover.md
// "Known limits".)
func TestReverseSourceReadsARawRecoveryDiskAsRaw(t *testing.T) {
	const size = 32 << 20
	r := newRoundTripFormat(t, size, "raw", "xfs")
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")

	marker := r.writeQCOW2Header(t, live, size)
	r.write(t, live, 50)

	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect")
	home, err := os.ReadFile(r.img)
	require.NoError(t, err)
	require.False(t, bytes.Contains(home, marker[:64]), "the home disk holds bytes of the recovery host's file")
}

// TestForwardSourceReadsARawHomeDiskAsRaw: a raw home disk whose guest
// writes, after protect, a qcow2 image with a backing file on the home
// host at the start of its disk is still read as raw (the format recorded
// at protect is forced): the failover's final point holds exactly the
// guest's bytes and nothing of the host's file; the round trip (commit,
// writes at the recovery site, reprotect) writes the home disk in place
// as raw, equal to the test's copy.
func TestForwardSourceReadsARawHomeDiskAsRaw(t *testing.T) {
	const size = 32 << 20
	r := newRoundTripFormat(t, size, "raw", "xfs")
	var show struct {
		Disks []struct {
			SourceFormat string `json:"source_format"`
		} `json:"disks"`
	}
	r.c.JSON(&show, "machines", "show", "vm")
	require.Len(t, show.Disks, 1)
	require.Equal(t, "raw", show.Disks[0].SourceFormat, "protect records the home disk's format")

	marker := r.writeQCOW2Header(t, r.img, size)
	r.write(t, r.img, 30)
	info, err := exec.Command("qemu-img", "info", "--output=json", r.img).CombinedOutput()
	require.NoError(t, err, "qemu-img info: %s", info)
	require.Contains(t, string(info), `"backing-filename"`, "the home disk now looks like a qcow2 with a backing file")

	r.c.runJob(t, 0, "failover", "vm")
	pts := r.c.Points("vm")
	last := pts[len(pts)-1]
	got, err := os.ReadFile(filepath.Join(r.c.Export("vm", last.ID), "d.raw"))
	require.NoError(t, err)
	require.False(t, bytes.Contains(got, marker[:64]), "the failover's point holds bytes of the home host's file")
	require.True(t, bytes.Equal(r.mirror, got), "the failover's point holds the guest's raw bytes")

	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.write(t, live, 30)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect")
}

// TestShippedWritesOfARawSetAreReadAsRaw: a change-point keeps what the
// machine wrote at a raw recovery site (target.ship of the live set). A
// guest that wrote a qcow2 image with a backing file on the recovery host
// at the start of its disk gets exactly its raw bytes kept, nothing of
// the host's file.
func TestShippedWritesOfARawSetAreReadAsRaw(t *testing.T) {
	const size = 32 << 20
	r := newRoundTripFormat(t, size, "raw", "xfs")
	first := r.c.Points("vm")[0]
	r.write(t, r.img, 30)
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	marker := r.writeQCOW2Header(t, live, size)

	r.c.runJob(t, 0, "change-point", "vm", "--point", fmt.Sprint(first.ID))
	var kept *Point
	for _, p := range r.c.Points("vm") {
		if strings.HasPrefix(p.Name, "target-writes-") {
			kept = &p
		}
	}
	require.NotNil(t, kept, "the machine's writes are kept as a named point")
	got, err := os.ReadFile(filepath.Join(r.c.Export("vm", kept.ID), "d.raw"))
	require.NoError(t, err)
	require.False(t, bytes.Contains(got, marker[:64]), "the kept point holds bytes of the recovery host's file")
	require.True(t, bytes.Equal(r.mirror, got), "the kept point holds the guest's raw bytes")
}

// writeQCOW2Header writes, at offset 0 of the raw disk at path and of the
// mirror, a qcow2 image of the disk's size made by qemu-img whose backing
// file is a file of this host, and returns that file's content.
func (r *roundTrip) writeQCOW2Header(t *testing.T, path string, size int64) []byte {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "host-secret.raw")
	marker := bytes.Repeat([]byte("recovery host secret "), 3000)
	require.NoError(t, os.WriteFile(secret, marker, 0o600))
	evil := filepath.Join(dir, "guest.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", evil, fmt.Sprint(size))
	img, err := os.ReadFile(evil)
	require.NoError(t, err)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(img, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	copy(r.mirror, img)
	return marker
}

// TestForwardReprotectFromQCOW2AfterRetentionPrunedItsPoint: the point
// the recovery site's raw files hold (the failover's) is pruned by
// retention while the machine replicates home. The re-protect after the
// failback cannot diff from it: it rewrites the raw files from nothing
// to the final point (every block of it), and the next failover's copy
// still equals the test's copy. On the way, retention (1 s) runs when the
// failback's final point commits, while the failback moves the home disk
// from the point before it: a diff that read rows after the prune lost
// blocks zero at the final point (the home disk differed about one run
// in eight before move re-checked its From point after the diff).
func TestForwardReprotectFromQCOW2AfterRetentionPrunedItsPoint(t *testing.T) {
	const size = 16 << 20
	r := newRoundTripFormat(t, size, "qcow2", "xfs")
	j := r.c.runJob(t, 0, "failover", "vm")
	failedOverTo := j.Machines[0].PointID
	require.NotZero(t, failedOverTo)
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.writeImage(t, live, "qcow2", 100)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.writeImage(t, live, "qcow2", 60)

	// Retention of 1 s: the failback's final point, once committed,
	// prunes every older point. A retention may not be shorter than the
	// point interval (it would keep no point between cycles), so the
	// interval goes to 1 s with it.
	r.c.MustFerry("policies", "update", "p", "--rp-every", "1s", "--retention", "1s")
	time.Sleep(1100 * time.Millisecond) // the points must be older than the retention, by the clock
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after failback")
	require.Eventually(t, func() bool {
		for _, p := range r.c.Points("vm") {
			if p.ID == failedOverTo {
				return false
			}
		}
		return true
	}, time.Minute, 100*time.Millisecond, "retention never pruned point %d", failedOverTo)

	r.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	require.Contains(t, r.c.Proc.Output(), "the staged point is gone; rewriting every written block", "the re-protect's move could not diff from the pruned point")
	r.c.runJob(t, 0, "failover", "vm")
	r.requireImageMirror(t, r.site.Hyp.Disks(t, "vm")[0], "qcow2", "failed over after retention pruned the raw files' point")
}

// TestUnplannedFailbackFromQCOW2Site: an unplanned failback to the first
// reverse point of a qcow2 recovery site loses the writes made there
// after it; the re-protect after the commit keeps them as
// recovery-divergent-<job>, read from the qcow2 file the machine ran on
// (byte-exact as the writer left it), moves the raw files from their own
// point, and the next failover's fresh copy holds the home disk.
func TestUnplannedFailbackFromQCOW2Site(t *testing.T) {
	const size = 16 << 20
	r := newRoundTripFormat(t, size, "qcow2", "xfs")
	r.c.runJob(t, 0, "failover", "vm")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.writeImage(t, live, "qcow2", 100)
	j := r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	p1 := j.Machines[0].PointID
	require.NotZero(t, p1)
	atP1 := bytes.Clone(r.mirror)
	r.writeImage(t, live, "qcow2", 60) // after p1: the unplanned failback loses them
	atRecovery := bytes.Clone(r.mirror)

	j = r.c.runJob(t, 0, "failback", "vm", "--point", fmt.Sprint(p1))
	require.Equal(t, p1, j.Machines[0].PointID)
	r.mirror = bytes.Clone(atP1)
	r.requireMirror(t, r.img, "home disk after failback --point P1")
	r.requireState(t, "failed-back", "home", "forward")
	r.c.runJob(t, 0, "commit", "vm", "--force")

	r.write(t, r.img, 50)
	j = r.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	rd := r.pointNamed(t, "recovery-divergent-"+j.ID)
	requireSameFileBytes(t, atRecovery, filepath.Join(r.c.Export("vm", rd.ID), "d.raw"))

	r.c.runJob(t, 0, "failover", "vm")
	r.requireImageMirror(t, r.site.Hyp.Disks(t, "vm")[0], "qcow2", "failed over again after the unplanned round trip")
}
