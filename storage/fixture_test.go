package storage

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Fixtures: tiny repositories written by this code when their format was
// current. Later builds must keep reading them (STYLE.md habit 1).
// FERRY_WRITE_FIXTURE=<name> regenerates the one named, which only makes
// sense with the build of its time.
const fixtureDir = "testdata/v1" // repository format 1, index schema 1

// fixtureDirs are every fixture, oldest first: format 1 with index schema 1
// (migrations 2–6 run when it opens), index schema 4, the last before
// patch records (written by d885300), and index schema 5, the last before
// the recent level (written by 7d07274).
var fixtureDirs = []string{fixtureDir, "testdata/index4", "testdata/index5"}

var fixtureDisks = []DiskSpec{{Name: "disk0", Size: 6 * tbs, BlockSize: tbs}}

// fixtureImages are the disk contents of the fixture's two points.
func fixtureImages() [2][]byte {
	var imgs [2][]byte
	img := make([]byte, 6*tbs)
	copy(img[0:], content(1, tbs))
	copy(img[2*tbs:], content(2, tbs))
	imgs[0] = append([]byte(nil), img...)
	copy(img[2*tbs:], content(3, tbs))
	copy(img[5*tbs:], content(4, tbs))
	imgs[1] = img
	return imgs
}

func writeFixture(t *testing.T, dir string, key *PrivateKey) {
	ctx := context.Background()
	os.RemoveAll(dir)
	co := CreateOptions{PackSize: MinPackSize, Clock: func() time.Time { return time.Unix(1_750_000_000, 0) }}
	if key != nil {
		co.PublicKey = key.Public()
		require.NoError(t, os.MkdirAll(dir, 0o700))
		require.NoError(t, key.WritePrivateKeyFile(filepath.Join(dir, "..", filepath.Base(dir)+".key")))
	}
	require.NoError(t, Create(ctx, dir, co))
	r, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	imgs := fixtureImages()
	for i, img := range imgs {
		p, err := r.BeginPoint(ctx, "fixture", fixtureDisks)
		require.NoError(t, err)
		var ws []BlockWrite
		for b := int64(0); b < 6; b++ {
			if i == 0 || !bytes.Equal(img[b*tbs:(b+1)*tbs], imgs[0][b*tbs:(b+1)*tbs]) {
				ws = append(ws, chunkWrite("disk0", b, img[b*tbs:(b+1)*tbs]))
			}
		}
		require.NoError(t, p.Write(ctx, ws))
		_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(1_750_000_000+i), 0), Consistency: CrashConsistent, Name: "fixture"})
		require.NoError(t, err)
	}
	_, err = r.c.db.ExecContext(ctx, `VACUUM`)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	os.RemoveAll(filepath.Join(dir, locksDir, lockName))
}

func copyTree(t *testing.T, src, dst string) {
	require.NoError(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	}))
}

func TestFormatFixtures(t *testing.T) {
	for _, fd := range fixtureDirs {
		t.Run(filepath.Base(fd), func(t *testing.T) { testFixture(t, fd) })
	}
}

func testFixture(t *testing.T, fixtureDir string) {
	ctx := context.Background()
	if w := os.Getenv("FERRY_WRITE_FIXTURE"); w != "" && w == filepath.Base(fixtureDir) {
		writeFixture(t, filepath.Join(fixtureDir, "plain"), nil)
		key, err := GenerateKey()
		require.NoError(t, err)
		writeFixture(t, filepath.Join(fixtureDir, "encrypted"), key)
	}
	imgs := fixtureImages()
	for _, name := range []string{"plain", "encrypted"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			copyTree(t, filepath.Join(fixtureDir, name), dir)
			var oo OpenOptions
			if name == "encrypted" {
				k, err := LoadPrivateKeyFile(filepath.Join(fixtureDir, name+".key"))
				require.NoError(t, err)
				oo.PrivateKey = k
			}
			r, err := Open(ctx, dir, oo)
			require.NoError(t, err)
			defer r.Close()
			require.Equal(t, name == "encrypted", r.Encrypted())
			pts, err := r.Points(ctx, "fixture")
			require.NoError(t, err)
			require.Len(t, pts, 2)
			for i, pt := range pts {
				require.Equal(t, imgs[i], diskImage(t, r, pt.ID, "disk0"))
			}
			rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
			require.NoError(t, err)
			require.Empty(t, rep.Damaged)
			require.True(t, rep.Plaintext)
		})
	}
}

// TestNewerFormatRefused: a repository of a newer format version fails to
// open with a message naming both versions.
func TestNewerFormatRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	copyTree(t, filepath.Join(fixtureDir, "plain"), dir)
	b, err := os.ReadFile(filepath.Join(dir, configName))
	require.NoError(t, err)
	b = bytes.Replace(b, []byte(`"format_version": 1`), []byte(`"format_version": 99`), 1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, configName), b, 0o600))
	_, err = Open(ctx, dir, OpenOptions{})
	var fv *FormatVersionError
	require.ErrorAs(t, err, &fv)
	require.Equal(t, 99, fv.Found)
	require.Equal(t, FormatVersionMin, fv.Min)
	require.Equal(t, FormatVersionMax, fv.Max)
	require.Contains(t, fv.Error(), "99")
	require.Contains(t, fv.Error(), "1 to 1")
}
