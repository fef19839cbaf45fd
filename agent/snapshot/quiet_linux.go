package snapshot

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// stampMask is what a stamp needs from statx. Asking for the times also
// marks them as seen, so that on a multigrain filesystem the next write
// gets a fresh fine-grained time.
const stampMask = unix.STATX_TYPE | unix.STATX_INO | unix.STATX_SIZE | unix.STATX_MTIME | unix.STATX_CTIME

// probeRounds is how many times the experiment writes twice: one round
// could straddle a clock tick by chance.
const probeRounds = 5

func statxTime(ts unix.StatxTimestamp) time.Time { return time.Unix(ts.Sec, int64(ts.Nsec)) }

// stampOf is the stamp and filesystem of a statx result.
func stampOf(path string, sx *unix.Statx_t) (fileStamp, fsKey, error) {
	if sx.Mask&stampMask != stampMask {
		return fileStamp{}, fsKey{}, fmt.Errorf("statx of %s reports no size or modification and change times (mask %#x): %w", path, sx.Mask, ErrNotSupported)
	}
	dev := unix.Mkdev(sx.Dev_major, sx.Dev_minor)
	key := fsKey{dev: dev}
	if sx.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
		key.mount = sx.Mnt_id // never reused
	}
	return fileStamp{dev: dev, ino: sx.Ino, size: int64(sx.Size), mtime: statxTime(sx.Mtime), ctime: statxTime(sx.Ctime)}, key, nil
}

// stampFile stamps the file at path (following symlinks).
func stampFile(path string) (fileStamp, fsKey, error) {
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_SYNC_AS_STAT, stampMask|unix.STATX_MNT_ID_UNIQUE, &sx); err != nil {
		return fileStamp{}, fsKey{}, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	return stampOf(path, &sx)
}

// probeTimestamps is the experiment: in dir, on the filesystem key, a test
// file is written, stamped, written again at once and stamped, a few
// times. fine is false, with what was seen, when a second write left a
// time unchanged.
func probeTimestamps(dir string, key fsKey) (fine bool, detail string, err error) {
	f, err := os.CreateTemp(dir, ".ferry-timestamps-*")
	if err != nil {
		return false, "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	stamp := func() (fileStamp, error) {
		var sx unix.Statx_t
		if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, stampMask|unix.STATX_MNT_ID_UNIQUE, &sx); err != nil {
			return fileStamp{}, &os.PathError{Op: "statx", Path: f.Name(), Err: err}
		}
		st, k, err := stampOf(f.Name(), &sx)
		if err == nil && k != key {
			err = fmt.Errorf("the test file %s is on another filesystem than the image", f.Name())
		}
		return st, err
	}
	for i := range probeRounds {
		if _, err := f.WriteAt([]byte{byte(2 * i)}, 0); err != nil {
			return false, "", err
		}
		a, err := stamp()
		if err != nil {
			return false, "", err
		}
		if _, err := f.WriteAt([]byte{byte(2*i + 1)}, 0); err != nil {
			return false, "", err
		}
		b, err := stamp()
		if err != nil {
			return false, "", err
		}
		if a.mtime.Equal(b.mtime) || a.ctime.Equal(b.ctime) {
			return false, fmt.Sprintf("two writes to a test file, one right after the other, left its modification or change time at %s",
				b.mtime.UTC().Format(time.RFC3339Nano)), nil
		}
	}
	return true, "", nil
}
