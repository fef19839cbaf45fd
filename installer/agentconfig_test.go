package installer

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAgentConfigRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry-agent.yaml")
	l := DefaultLayout("linux", "", os.Getenv)
	want := DefaultAgentConfig(l, "linux")
	want.Scan = []string{"/srv/images"}
	want.Streams = 4
	want.TrackWrites, want.MaxCapture, want.MaxFreeze = true, 64<<20, "3s"
	want.FreezeOwnFS = []string{"/srv/data", "/"}
	require.NoError(t, writeAgentConfig(path, want))
	got, err := LoadAgentConfig(path)
	require.NoError(t, err)
	require.Equal(t, want, got)
	d, err := got.Trial()
	require.NoError(t, err)
	require.Equal(t, time.Minute, d)
	d, err = got.Freeze()
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, d)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), "# ferry-agent configuration, written by `ferry-agent install`")
}

func TestAgentConfigRefusals(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":     "state_dir: /x\nstate-dir: /y\n",
		"no state dir":    "log_level: info\n",
		"bad level":       "state_dir: /x\nlog_level: loud\n",
		"bad trial":       "state_dir: /x\nupgrade_trial: soon\n",
		"zero trial":      "state_dir: /x\nupgrade_trial: 0s\n",
		"streams":         "state_dir: /x\nstreams: -1\n",
		"zero freeze":     "state_dir: /x\nmax_freeze: 0s\n",
		"long freeze":     "state_dir: /x\nmax_freeze: 61s\n",
		"bad freeze":      "state_dir: /x\nmax_freeze: soon\n",
		"relative own fs": "state_dir: /x\nfreeze_own_fs: [data]\n",
		"not yaml":        "state_dir: [\n",
	} {
		path := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
		_, err := LoadAgentConfig(path)
		var pe *PathError
		require.ErrorAs(t, err, &pe, name)
		require.Equal(t, path, pe.Path)
	}
	_, err := LoadAgentConfig(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestMkdirsUndo(t *testing.T) {
	base := t.TempDir()
	deep := filepath.Join(base, "a", "b", "c")
	created, err := mkdirs(deep, 0o755)
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b"), deep}, created)
	again, err := mkdirs(deep, 0o755)
	require.NoError(t, err)
	require.Empty(t, again)
	require.NoError(t, removeDirs(created))
	require.NoDirExists(t, filepath.Join(base, "a"))
	require.DirExists(t, base)
}

func TestRemoveNewEntries(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "keep"), nil, 0o600))
	before, ok := entries(dir)
	require.True(t, ok)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "new"), nil, 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "newdir"), 0o700))
	require.NoError(t, removeNewEntries(dir, before))
	now, _ := entries(dir)
	require.Equal(t, []string{"keep"}, now)
}

func TestCopyFileAtomic(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	require.NoError(t, os.WriteFile(src, []byte("new"), 0o600))
	require.NoError(t, os.WriteFile(dst, []byte("old"), 0o600))
	require.NoError(t, copyFileAtomic(src, dst, 0o755))
	b, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, "new", string(b))
	fi, err := os.Stat(dst)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	require.NoFileExists(t, dst+".tmp")
	same, err := sameFile(dst, dst)
	require.NoError(t, err)
	require.True(t, same)
	same, err = sameFile(src, dst)
	require.NoError(t, err)
	require.False(t, same)
	err = copyFileAtomic(filepath.Join(dir, "missing"), dst, 0o755)
	require.ErrorIs(t, err, os.ErrNotExist)
}
