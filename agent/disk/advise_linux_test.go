package disk

import (
	"bufio"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
)

// procReadBytes is this process's bytes fetched from storage
// (/proc/self/io read_bytes): what the device really read, readahead
// included, which the reader's own counters cannot see.
func procReadBytes(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/io")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "read_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatal("no read_bytes in /proc/self/io")
	return 0
}

// 4 KiB reads of a raw disk advised random fetch what they ask for. The
// reads are adjacent, as the changed blocks of a cycle often are, which is
// what sets the kernel's readahead off: without the advice it fetches
// several times more (the control, which also proves that the measurement
// sees readahead at all).
func TestAdviseRandomStopsReadahead(t *testing.T) {
	const size, stride, n = 8 << 20, 4 << 10, 256
	path := filepath.Join(t.TempDir(), "d.raw")
	f, err := os.Create(path)
	require.NoError(t, err)
	buf := make([]byte, 1<<20)
	for range size / len(buf) {
		rand.Read(buf)
		_, err := f.Write(buf)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	defer f.Close()

	fetched := func(advise bool) int64 {
		// Drop the file's cached pages (written back by the Sync above).
		require.NoError(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
		src, err := Open(path, OpenOptions{Format: FormatRaw})
		require.NoError(t, err)
		defer src.Close()
		if advise {
			AdviseRandom(src)
		}
		p := make([]byte, 4096)
		before := procReadBytes(t)
		for i := range int64(n) {
			_, err := src.ReadAt(p, i*stride)
			require.NoError(t, err)
		}
		return procReadBytes(t) - before
	}
	asked := int64(n * 4096)
	control := fetched(false)
	testenv.Require(t, control >= 2*asked, "the filesystem under TMPDIR shows no readahead in read_bytes (tmpfs?): "+
		strconv.FormatInt(control, 10)+" bytes fetched for "+strconv.FormatInt(asked, 10)+" asked")
	advised := fetched(true)
	t.Logf("asked %d bytes: fetched %d without advice, %d advised random", asked, control, advised)
	require.LessOrEqual(t, advised, asked+asked/4, "advised random reads still fetched readahead")
}
