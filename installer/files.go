package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/internal/fsutil"
)

// Manifest is what Install records about an installation.
type Manifest struct {
	Service    string    `json:"service"`
	System     string    `json:"system"`
	Version    string    `json:"version"`
	Binary     string    `json:"binary"`
	ConfigFile string    `json:"config_file"`
	StateDir   string    `json:"state_dir"`
	Installed  time.Time `json:"installed"`
}

func writeManifest(path string, m Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// ReadManifest reads an installation's manifest.
func ReadManifest(path string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, &PathError{Op: "read manifest", Path: path, Err: err}
	}
	return m, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// entries lists a directory's names, and whether it exists.
func entries(dir string) ([]string, bool) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, exists(dir)
	}
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	return names, true
}

// removeNewEntries removes what appeared in dir since before was listed.
func removeNewEntries(dir string, before []string) error {
	now, _ := entries(dir)
	var errs []error
	for _, n := range now {
		if !slices.Contains(before, n) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, n)))
		}
	}
	return errors.Join(errs...)
}

// mkdirs is os.MkdirAll that returns the directories it created, outermost
// first, so an undo removes exactly those.
func mkdirs(dir string, mode os.FileMode) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); !exists(d); d = filepath.Dir(d) {
		missing = append([]string{d}, missing...)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeDirs removes directories that are empty, innermost first.
func removeDirs(dirs []string) error {
	var errs []error
	for k := len(dirs) - 1; k >= 0; k-- {
		if err := os.Remove(dirs[k]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeIfEmpty removes dir when nothing is left in it.
func removeIfEmpty(dir string) (bool, error) {
	names, ok := entries(dir)
	if !ok || len(names) > 0 {
		return false, nil
	}
	return true, os.Remove(dir)
}

// sameFile reports whether a and b are the same file.
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// copyFileAtomic copies src to dst through dst.tmp: a crash leaves dst
// whole, old or new.
func copyFileAtomic(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = replaceFile(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return &PathError{Op: "copy " + src + " to", Path: dst, Err: err}
	}
	return fsutil.SyncDir(filepath.Dir(dst))
}

// binaryVersion runs `BINARY version`.
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", bin, err)
	}
	return strings.TrimSpace(string(out)), nil
}
