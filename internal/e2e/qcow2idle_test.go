package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// pointReads are the agent's cumulative container_read_bytes at each
// "point made" line of a machine, in order.
var pointMadeRE = regexp.MustCompile(`msg="point made".*? machine=(\S+).*? point=(\d+) .*container_read_bytes=(\d+)`)

func pointReads(out, machine string) (points []int64, reads []int64) {
	for _, m := range pointMadeRE.FindAllStringSubmatch(out, -1) {
		if m[1] != machine {
			continue
		}
		p, _ := strconv.ParseInt(m[2], 10, 64)
		n, _ := strconv.ParseInt(m[3], 10, 64)
		points, reads = append(points, p), append(reads, n)
	}
	return points, reads
}

// TestIdleQcow2IsNotReread: a qcow2 image (made by qemu-img, about 40 MiB
// allocated) on XFS, protected with a 1 s interval and not written: each
// idle cycle reads almost nothing from the container (at most 1 MiB: its
// header and tables, never its data), where it used to read every
// allocated block again. Then one 64 KiB write by qemu-io is picked up:
// the next point equals the test's own copy of the disk with that write.
func TestIdleQcow2IsNotReread(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	testenv.RequireTool(t, "qemu-io")
	mnt := testenv.MountLoop(t, "xfs", 512<<20)
	const size = 64 << 20
	raw := filepath.Join(t.TempDir(), "src.raw")
	want := makeImage(t, raw, 51, size)
	img := filepath.Join(mnt, "vm.qcow2")
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, img)
	alloc := allocated(t, img)
	require.Greater(t, alloc, int64(16<<20), "precondition: the image holds enough data for a re-read to show")

	c := StartController(t)
	agent := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("vm", 0, 2*time.Minute)
	requireExport(t, c, "vm", first, "d", want)

	// Five idle cycles after the first point.
	var pts, reads []int64
	require.Eventually(t, func() bool {
		pts, reads = pointReads(agent.Proc.Output(), "vm")
		return len(pts) >= 6
	}, 2*time.Minute, 100*time.Millisecond, "five idle cycles")
	for i := 1; i < len(reads); i++ {
		d := reads[i] - reads[i-1]
		t.Logf("idle point %d: the agent read %d bytes of the container (allocated %d)", pts[i], d, alloc)
		require.LessOrEqual(t, d, int64(1<<20), "idle point %d: the agent re-read %d bytes of an unchanged qcow2", pts[i], d)
	}

	// One small guest write through qemu's own qcow2 code.
	const off = 20<<20 + 4096
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xab %d 65536", off), img).CombinedOutput()
	require.NoError(t, err, "qemu-io: %s", out)
	copy(want[off:off+65536], bytes.Repeat([]byte{0xab}, 65536))
	_, before := pointReads(agent.Proc.Output(), "vm")
	p := pointAfterNow(t, c, "vm")
	requireExport(t, c, "vm", p, "d", want)
	_, after := pointReads(agent.Proc.Output(), "vm")
	t.Logf("the cycles that picked up the write read %d bytes in all", after[len(after)-1]-before[len(before)-1])
	require.NoError(t, os.Remove(img))
}
