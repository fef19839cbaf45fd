package repokey

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/internal/fsutil"
)

// FileName is the installed key's file in the agent's state directory.
const FileName = "repository.key"

// Path returns where the key of the agent with state directory dir lives.
func Path(dir string) string { return filepath.Join(dir, FileName) }

// Install checks that src holds a repository private key and stores it in
// the state directory dir with mode 0600 through the small-file durable
// path (temp, fsync, rename, fsync dir), replacing a key installed before.
// It returns the installed key; nothing changes when src is refused.
func Install(dir, src string) (*Key, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("repokey: read %s: %w", src, err)
	}
	k, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("repokey: state directory %s: %w", dir, errors.Join(err, errNotDir(fi)))
	}
	if err := fsutil.WriteFileAtomic(Path(dir), b, 0o600); err != nil {
		return nil, fmt.Errorf("repokey: install %s: %w", Path(dir), err)
	}
	return k, nil
}

func errNotDir(fi os.FileInfo) error {
	if fi != nil && !fi.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}

// Load reads the key installed in state directory dir: ErrNoKey when none is.
func Load(dir string) (*Key, error) {
	b, err := os.ReadFile(Path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoKey
	}
	if err != nil {
		return nil, fmt.Errorf("repokey: read %s: %w", Path(dir), err)
	}
	k, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Path(dir), err)
	}
	return k, nil
}

// Remove deletes the installed key (and syncs the directory). Removing
// when none is installed is ErrNoKey.
func Remove(dir string) error {
	err := os.Remove(Path(dir))
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoKey
	}
	if err != nil {
		return fmt.Errorf("repokey: remove %s: %w", Path(dir), err)
	}
	return fsutil.SyncDir(dir)
}
