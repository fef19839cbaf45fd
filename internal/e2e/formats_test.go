package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// qemuImg runs qemu-img (Debian's qemu-utils, installed by
// scripts/test-deps.sh) and fails the test on error.
func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	testenv.RequireTool(t, "qemu-img")
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	require.NoError(t, err, "qemu-img %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// imageVariant is one container made by qemu-img from the raw image.
type imageVariant struct {
	name, format string
	opts         []string
}

var imageVariants = []imageVariant{
	{"vhdx", "vhdx", nil},
	{"vmdk-sparse", "vmdk", []string{"-o", "subformat=monolithicSparse"}},
	{"vmdk-stream", "vmdk", []string{"-o", "subformat=streamOptimized"}},
	{"qcow2", "qcow2", nil},
}

func (v imageVariant) file() string {
	return v.name + "." + v.format
}

var containerRead = regexp.MustCompile(`container_read_bytes=(\d+)`)

// TestImageFormatsReplicate: VHDX, VMDK (monolithicSparse and
// streamOptimized) and qcow2 images made from one raw image show in the
// inventory with their format and virtual size, replicate to points whose
// exports equal the raw image, and the agent reads no hole: the bytes it
// read from the container files stay below their allocated size plus 5%.
func TestImageFormatsReplicate(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	// An odd virtual size (not a multiple of the 64 KiB block; a whole
	// number of sectors, as these formats count them) with holes, random
	// and compressible regions.
	const size = 48<<20 + 25*512
	raw := filepath.Join(t.TempDir(), "base.raw")
	want := makeImage(t, raw, 44, size)
	for _, v := range imageVariants {
		p := filepath.Join(dir, v.file())
		qemuImg(t, append(append([]string{"convert", "-f", "raw", "-O", v.format}, v.opts...), raw, p)...)
	}

	c := StartController(t)
	agent := EnrollAgent(t, c, c.Addr, "src", "--scan", dir)
	var inv []struct {
		Path, Format string
		Size         int64
	}
	c.JSON(&inv, "inventory", "src")
	for _, v := range imageVariants {
		p := filepath.Join(dir, v.file())
		found := false
		for _, it := range inv {
			if it.Path == p {
				found = true
				require.Equal(t, v.format, it.Format, "inventory format of %s", p)
				require.Equal(t, int64(size), it.Size, "inventory virtual size of %s", p)
			}
		}
		require.True(t, found, "inventory lists %s: %+v", p, inv)
	}

	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	power := filepath.Join(t.TempDir(), "power")
	require.NoError(t, os.WriteFile(power, []byte("stopped\n"), 0o644))
	// One at a time, so each format's reads are its own.
	read := func() int64 {
		var n int64
		for _, m := range containerRead.FindAllStringSubmatch(agent.Proc.Output(), -1) {
			v, _ := strconv.ParseInt(m[1], 10, 64)
			n = max(n, v) // cumulative since the agent started
		}
		return n
	}
	for _, v := range imageVariants {
		p := filepath.Join(dir, v.file())
		before := read()
		c.MustFerry("protect", v.name, "--agent", "src", "--disk", "d="+p, "--policy", "p", "--status", "cat "+power)
		pt := c.WaitPoint(v.name, 0, 3*time.Minute)
		got, err := os.ReadFile(filepath.Join(c.Export(v.name, pt.ID), "d.raw"))
		require.NoError(t, err)
		require.Equal(t, len(want), len(got), "%s: exported size", v.name)
		require.True(t, string(want) == string(got), "%s: the export differs from the raw image", v.name)
		require.Eventually(t, func() bool { return read() > before }, 10*time.Second, 50*time.Millisecond, "the agent logs what it read")
		n, alloc := read()-before, allocated(t, p)
		t.Logf("%s: the agent read %d bytes of a container whose allocated size is %d (%.3f×); virtual size %d",
			v.name, n, alloc, float64(n)/float64(alloc), int64(size))
		require.LessOrEqual(t, n, alloc*105/100, "%s: the agent read more than the allocated bytes + 5%%: it read holes", v.name)
	}
}

// TestBrokenImagesRefusedAtProtect: a qcow2 image marked dirty, a VHDX
// whose log cannot be replayed and a VMDK with a broken grain table are
// refused by `ferry protect` with a message saying what is wrong, and
// nothing is protected.
func TestBrokenImagesRefusedAtProtect(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	makeImage(t, raw, 45, 16<<20)
	cases := []struct {
		name, format string
		opts         []string
		damage       func(t *testing.T, b []byte) []byte
		want         string
	}{
		{"dirty", "qcow2", []string{"-o", "compat=1.1"}, markQCOW2Dirty, "dirty"},
		{"log", "vhdx", nil, setVHDXLogGUID, "log"},
		{"grain", "vmdk", []string{"-o", "subformat=monolithicSparse"}, breakVMDKGrainTable, "grain table"},
	}
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "p")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+"."+tc.format)
			qemuImg(t, append(append([]string{"convert", "-f", "raw", "-O", tc.format}, tc.opts...), raw, p)...)
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, tc.damage(t, b), 0o644))
			r := c.Ferry("protect", tc.name, "--agent", "src", "--disk", "d="+p, "--policy", "p")
			require.NotEqual(t, 0, r.Code, "protect of a damaged %s succeeded", tc.format)
			t.Logf("ferry protect: %s", strings.TrimSpace(r.Stderr))
			require.Contains(t, r.Stderr, tc.format)
			require.Contains(t, r.Stderr, tc.want)
			require.Contains(t, r.Stderr, p, "the message names the file")
			require.Equal(t, 1, c.Ferry("machines", "show", tc.name).Code, "nothing was protected")
		})
	}
}

// markQCOW2Dirty sets the dirty bit (incompatible feature bit 0 of a v3
// header): the image was not closed cleanly and its refcounts may be
// stale.
func markQCOW2Dirty(t *testing.T, b []byte) []byte {
	require.Equal(t, uint32(3), binary.BigEndian.Uint32(b[4:]), "qcow2 v3")
	binary.BigEndian.PutUint64(b[72:], binary.BigEndian.Uint64(b[72:])|1)
	return b
}

// setVHDXLogGUID marks both headers as having a log to replay and writes
// one entry header of that log whose checksum is wrong (a torn entry): the
// log cannot be replayed. (A log GUID with no entry of it at all is an
// empty log, which a reader accepts.)
func setVHDXLogGUID(t *testing.T, b []byte) []byte {
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	var logOff int64
	for _, off := range []int{64 << 10, 128 << 10} {
		h := b[off : off+4096]
		require.Equal(t, "head", string(h[:4]))
		copy(h[48:64], "ferry-test-log-1")
		binary.LittleEndian.PutUint32(h[4:], 0)
		binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(h, castagnoli))
		logOff = int64(binary.LittleEndian.Uint64(h[72:80])) // LogOffset
	}
	require.Positive(t, logOff)
	e := b[logOff : logOff+4096]
	copy(e[0:4], "loge")
	binary.LittleEndian.PutUint32(e[4:], 0xdeadbeef) // not the entry's checksum
	binary.LittleEndian.PutUint32(e[8:], 4096)       // EntryLength
	binary.LittleEndian.PutUint64(e[16:], 1)         // SequenceNumber
	copy(e[32:48], "ferry-test-log-1")
	return b
}

// breakVMDKGrainTable points the first allocated grain of grain table 0
// (through both the grain directory and its redundant copy) far past the
// end of the file.
func breakVMDKGrainTable(t *testing.T, b []byte) []byte {
	require.Equal(t, "KDMV", string(b[:4]))
	gtes := int64(binary.LittleEndian.Uint32(b[44:]))
	for _, at := range []int{48, 56} { // rgdOffset, gdOffset (sectors)
		gd := int64(binary.LittleEndian.Uint64(b[at:])) * 512
		if gd == 0 {
			continue
		}
		gt := int64(binary.LittleEndian.Uint32(b[gd:])) * 512
		for i := int64(0); i < gtes; i++ {
			if binary.LittleEndian.Uint32(b[gt+4*i:]) > 1 {
				binary.LittleEndian.PutUint32(b[gt+4*i:], 0x7ffffff0)
				break
			}
		}
	}
	return b
}

// TestTargetFormats: a target whose hypervisor wants qcow2, VHDX or VMDK
// gets the failed-over disks in that format, which qemu-img finds
// identical to the point's raw content; the machine runs on that file, so
// a change-point keeps what it wrote there; cleanup of a test failover
// removes the copies with the test set.
func TestTargetFormats(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	testenv.RequireTool(t, "qemu-io")
	f := &failoverSetup{mnt: testenv.MountLoop(t, "xfs", 1<<30)}
	f.c = StartController(t)
	f.src = EnrollAgent(t, f.c, f.c.Addr, "src")
	f.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	const size = 32<<20 + 4096
	for _, format := range []string{"qcow2", "vhdx", "vmdk"} {
		t.Run(format, func(t *testing.T) {
			site := AddSite(t, f.c, f.c.Addr, "dr-"+format, "--format", format)
			f.site = site
			name := "m-" + format
			const x = 128 << 10 // a block the source and the machine both write
			img := filepath.Join(f.mnt, name+".img")
			makeImage(t, img, uint64(len(name))*7+3, size)
			writePattern(t, img, x, 0x5a)
			f.c.MustFerry("protect", name, "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", site.Name)
			p1 := f.c.WaitPoint(name, 0, 3*time.Minute)
			site.waitStaged(t, name, p1.ID)
			exp1 := keepCopy(t, img) // the source at p1: nothing wrote to it since
			files := site.Files(t)

			// A test failover: the test set's copy, then cleanup.
			f.c.runJob(t, 0, "failover", name, "--test")
			test := site.Hyp.Disks(t, name+"-test")[0]
			require.True(t, strings.HasSuffix(test, "."+format), "the driver gets the %s copy: %s", format, test)
			// The source has not changed since p1: the test set's copy holds
			// the bytes kept then.
			out := qemuImg(t, "compare", "-f", "raw", "-F", format, exp1, test)
			t.Logf("qemu-img compare: %s", strings.TrimSpace(out))
			f.c.runJob(t, 0, "cleanup", name)
			require.ElementsMatch(t, files, site.Files(t), "cleanup leaves the recovery site as it was")

			// The source changes block x; a failover (a fresh point p2):
			// the machine runs on the copy.
			writePattern(t, img, x, 0xcd)
			f.c.runJob(t, 0, "failover", name)
			live := site.Hyp.Disks(t, name)[0]
			require.True(t, strings.HasSuffix(live, "."+format), "the driver gets the %s copy: %s", format, live)
			qemuImg(t, "compare", "-f", "raw", "-F", format, img, live)
			var shown struct {
				Disks []struct {
					TargetPath string `json:"target_path"`
					Format     string `json:"format"`
				} `json:"disks"`
			}
			f.c.JSON(&shown, "machines", "show", name)
			require.Equal(t, live, shown.Disks[0].TargetPath, "machines show names the disk the machine runs on")
			require.Equal(t, format, shown.Disks[0].Format)
			// The machine writes a new block, and block x back to what
			// it held at p1.
			out2, err := exec.Command("qemu-io", "-f", format, "-c", "write -P 0xab 65536 65536", "-c", fmt.Sprintf("write -P 0x5a %d 65536", x), live).CombinedOutput()
			require.NoError(t, err, "qemu-io: %s", out2)

			// change-point to p1 keeps those writes as a named point, read
			// from the copy, and the disks then equal p1 exactly.
			f.c.runJob(t, 0, "change-point", name, "--point", fmt.Sprint(p1.ID))
			var kept *Point
			for _, p := range f.c.Points(name) {
				if strings.HasPrefix(p.Name, "target-writes-") {
					kept = &p
				}
			}
			require.NotNil(t, kept, "the target's writes are kept as a named point")
			got, err := os.ReadFile(filepath.Join(f.c.Export(name, kept.ID), "d.raw"))
			require.NoError(t, err)
			wantW, err := os.ReadFile(img)
			require.NoError(t, err)
			copy(wantW[65536:2*65536], bytes.Repeat([]byte{0xab}, 65536))
			copy(wantW[x:x+65536], bytes.Repeat([]byte{0x5a}, 65536))
			require.True(t, string(wantW) == string(got), "the named point holds what the machine wrote to its %s disk", format)
			live = site.Hyp.Disks(t, name)[0]
			qemuImg(t, "compare", "-f", "raw", "-F", format, exp1, live)
			f.c.runJob(t, 0, "commit", name, "--force")
		})
	}
}

// TestMachinesSharingBlocksReplicateTogether: four machines whose disks
// hold the same guest content in four formats, protected at once on one
// agent: their cycles dedup against each other while they run, every
// cycle succeeds the first time (no cycle is failed and retried), and
// every export equals the raw image.
func TestMachinesSharingBlocksReplicateTogether(t *testing.T) {
	testenv.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(t.TempDir(), "base.raw")
	want := makeImage(t, raw, 46, 48<<20)
	for _, v := range imageVariants {
		qemuImg(t, append(append([]string{"convert", "-f", "raw", "-O", v.format}, v.opts...), raw, filepath.Join(dir, v.file()))...)
	}
	c := StartController(t)
	agent := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	power := filepath.Join(t.TempDir(), "power")
	require.NoError(t, os.WriteFile(power, []byte("stopped\n"), 0o644))
	for _, v := range imageVariants {
		c.MustFerry("protect", v.name, "--agent", "src", "--disk", "d="+filepath.Join(dir, v.file()), "--policy", "p", "--status", "cat "+power)
	}
	for _, v := range imageVariants {
		p := c.WaitPoint(v.name, 0, 3*time.Minute)
		got, err := os.ReadFile(filepath.Join(c.Export(v.name, p.ID), "d.raw"))
		require.NoError(t, err)
		require.True(t, string(want) == string(got), "%s: the export differs from the raw image", v.name)
	}
	for _, l := range strings.Split(agent.Proc.Output(), "\n") {
		require.NotContains(t, l, `msg="cycle failed"`)
	}
}

// writePattern fills the 64 KiB at off of path with b, in place.
func writePattern(t *testing.T, path string, off int64, b byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte{b}, 64<<10), off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}
