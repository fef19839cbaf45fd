package vsphere

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/internal/testenv"
)

// parsedDescriptor is a descriptor read back the way VMware's "Virtual Disk
// Format 5.0" technote lays it out: a header of key=value lines, extent
// lines, then ddb.KEY = "VALUE" lines.
type parsedDescriptor struct {
	header  map[string]string
	extents []string
	ddb     map[string]string
}

func parseDescriptor(t *testing.T, text []byte) parsedDescriptor {
	t.Helper()
	p := parsedDescriptor{header: map[string]string{}, ddb: map[string]string{}}
	require.True(t, bytes.HasPrefix(text, []byte("# Disk DescriptorFile\n")), "the technote's first line")
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		require.NotContains(t, line, "\r", "LF line ends")
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "RW ") || strings.HasPrefix(line, "RDONLY ") || strings.HasPrefix(line, "NOACCESS "):
			p.extents = append(p.extents, line)
		case strings.HasPrefix(line, "ddb."):
			k, v, ok := strings.Cut(line, " = ")
			require.True(t, ok, "ddb line %q: KEY = \"VALUE\"", line)
			require.True(t, len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"', "ddb value quoted: %q", line)
			p.ddb[k] = v[1 : len(v)-1]
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "header line %q: key=value", line)
			p.header[k] = strings.Trim(v, `"`)
		}
	}
	return p
}

// vmfsExtent is the technote's extent line for an ESX(i) VMFS extent:
// access, size in sectors, type, quoted file name, and no offset.
var vmfsExtent = regexp.MustCompile(`^RW ([1-9][0-9]*) VMFS "([^"/\\]+)"$`)

// TestDescriptorFormat checks the descriptor against the technote: the
// required header keys (version 1, a hexadecimal 32-bit CID, no parent,
// createType vmfs), exactly one extent line of the VMFS syntax naming the
// raw file with raw size / 512 sectors, and a ddb geometry whose cylinders
// are the whole cylinders of heads x sectors the disk holds (ESXi's choice
// of 64x32 below 1 GiB and 255x63 above).
func TestDescriptorFormat(t *testing.T) {
	for _, size := range []int64{512, 1 << 20, 1<<30 - 512, 1 << 30, 40 << 30, 3<<40 + 7*512} {
		text, err := Descriptor("disk0.raw", size)
		require.NoError(t, err)
		p := parseDescriptor(t, text)
		require.Equal(t, "1", p.header["version"])
		require.Equal(t, "UTF-8", p.header["encoding"])
		require.Regexp(t, `^[0-9a-f]{8}$`, p.header["CID"])
		require.Equal(t, "ffffffff", p.header["parentCID"])
		require.Equal(t, "vmfs", p.header["createType"])
		require.Len(t, p.extents, 1)
		m := vmfsExtent.FindStringSubmatch(p.extents[0])
		require.NotNil(t, m, "extent line %q", p.extents[0])
		sectors, _ := strconv.ParseInt(m[1], 10, 64)
		require.Equal(t, size/512, sectors)
		require.Equal(t, "disk0.raw", m[2])

		require.Equal(t, "lsilogic", p.ddb["ddb.adapterType"])
		c, err1 := strconv.ParseInt(p.ddb["ddb.geometry.cylinders"], 10, 64)
		h, err2 := strconv.ParseInt(p.ddb["ddb.geometry.heads"], 10, 64)
		s, err3 := strconv.ParseInt(p.ddb["ddb.geometry.sectors"], 10, 64)
		require.NoError(t, err1)
		require.NoError(t, err2)
		require.NoError(t, err3)
		if size < 1<<30 {
			require.Equal(t, [2]int64{64, 32}, [2]int64{h, s})
		} else {
			require.Equal(t, [2]int64{255, 63}, [2]int64{h, s})
		}
		require.LessOrEqual(t, c*h*s, sectors, "geometry within the disk")
		require.Greater(t, (c+1)*h*s, sectors, "every whole cylinder counted")
		require.NotEmpty(t, p.ddb["ddb.virtualHWVersion"])
	}
	// Another size, another content ID.
	a, _ := Descriptor("d.raw", 1<<20)
	b, _ := Descriptor("d.raw", 2<<20)
	require.NotEqual(t, parseDescriptor(t, a).header["CID"], parseDescriptor(t, b).header["CID"])
}

// TestDescriptorRefusals: sizes that are not whole sectors and file names
// that cannot be quoted are refused.
func TestDescriptorRefusals(t *testing.T) {
	for _, size := range []int64{0, -512, 1000} {
		_, err := Descriptor("d.raw", size)
		require.ErrorIs(t, err, ErrDisk, "size %d", size)
	}
	for _, name := range []string{"", `a"b.raw`, "dir/d.raw", "a\nb"} {
		_, err := Descriptor(name, 512)
		require.ErrorIs(t, err, ErrDisk, "name %q", name)
	}
}

// TestDescriptorReadsTheRawFile: WriteDescriptor puts DISK-esxi.vmdk next
// to DISK.raw, leaves the raw file alone, and a reader of VMware's format
// (agent/disk) opening the descriptor reads exactly the bytes the test
// staged; a size change rewrites it, an unchanged size keeps the file.
func TestDescriptorReadsTheRawFile(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk0.raw")
	want := make([]byte, 3<<20)
	_, _ = rand.Read(want)
	require.NoError(t, os.WriteFile(raw, want, 0o644))

	desc, err := WriteDescriptor(raw)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "disk0-esxi.vmdk"), desc)
	src, err := disk.Open(desc, disk.OpenOptions{})
	require.NoError(t, err)
	require.Equal(t, disk.FormatVMDK, src.Format())
	require.EqualValues(t, len(want), src.Size())
	got, err := io.ReadAll(io.NewSectionReader(src, 0, src.Size()))
	require.NoError(t, err)
	require.NoError(t, src.Close())
	require.True(t, bytes.Equal(want, got), "the descriptor reads the staged raw bytes")
	after, err := os.ReadFile(raw)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, after), "the raw file is not modified")

	fi1, err := os.Stat(desc)
	require.NoError(t, err)
	_, err = WriteDescriptor(raw)
	require.NoError(t, err)
	fi2, err := os.Stat(desc)
	require.NoError(t, err)
	require.True(t, os.SameFile(fi1, fi2), "an unchanged descriptor is not rewritten")

	require.NoError(t, os.Truncate(raw, 4<<20))
	_, err = WriteDescriptor(raw)
	require.NoError(t, err)
	text, err := os.ReadFile(desc)
	require.NoError(t, err)
	require.Contains(t, string(text), `RW 8192 VMFS "disk0.raw"`)
	_, err = os.Stat(desc + ".tmp")
	require.True(t, os.IsNotExist(err), "no temporary file left")

	require.NoError(t, os.Truncate(raw, 4<<20+100))
	_, err = WriteDescriptor(raw)
	require.ErrorIs(t, err, ErrDisk)
}

// TestDescriptorQemuImg: a second, independent reader of VMware's format
// (qemu's vmdk driver, which knows createType vmfs and VMFS extents) sees
// the descriptor as a vmdk of the raw file's size and identical content.
func TestDescriptorQemuImg(t *testing.T) {
	qemuImg := testenv.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk0.raw")
	b := make([]byte, 5<<20)
	_, _ = rand.Read(b)
	require.NoError(t, os.WriteFile(raw, b, 0o644))
	desc, err := WriteDescriptor(raw)
	require.NoError(t, err)
	out, err := exec.Command(qemuImg, "info", "--output=json", desc).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	require.NoError(t, json.Unmarshal(out, &info), "%s", out)
	require.Equal(t, "vmdk", info.Format)
	require.EqualValues(t, len(b), info.VirtualSize)
	out, err = exec.Command(qemuImg, "compare", "-f", "vmdk", "-F", "raw", desc, raw).CombinedOutput()
	require.NoError(t, err, "qemu-img compare: %s", out)
}
