package storage

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The named fsyncs of the write paths (docs/crash-semantics.md). Every
// durable step goes through a syncer so the power-loss test can remove one
// of them by name and prove that the removal is caught.
const (
	syncConfigFile = "config.file" // config temp file before rename
	syncConfigDir  = "config.dir"  // repository dir after config rename
	syncKeyFile    = "key.file"    // key file temp before rename
	syncKeyDir     = "key.dir"     // key file's dir after rename
	syncPackMkdir  = "pack.mkdir"  // packs/ after creating packs/XX
	syncPackCreate = "pack.create" // packs/XX after creating a pack file
	syncPackAppend = "pack.append" // fdatasync of an appended batch
	syncPackSeal   = "pack.seal"   // fdatasync of a footer
)

// SyncPoints lists every named fsync, for tests that remove each in turn.
func syncPoints() []string {
	return []string{syncConfigFile, syncConfigDir, syncKeyFile, syncKeyDir, syncPackMkdir,
		syncPackCreate, syncPackAppend, syncPackSeal}
}

// syncer performs the named fsyncs. Its zero value syncs everything; skip is
// set only by tests (never from the environment in production code).
type syncer struct {
	skip string
}

func (s syncer) dataSync(name string, f *os.File) error {
	if s.skip == name {
		return nil
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return opErr("fdatasync", f.Name(), err)
	}
	return nil
}

func (s syncer) fileSync(name string, f *os.File) error {
	if s.skip == name {
		return nil
	}
	return opErr("fsync", f.Name(), f.Sync())
}

func (s syncer) dirSync(name, dir string) error {
	if s.skip == name {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return opErr("open dir", dir, err)
	}
	defer d.Close()
	return opErr("fsync dir", dir, d.Sync())
}

// writeFile is the small-file durable path: temp → write → fsync → close →
// rename → fsync dir. A crash leaves either the old file or the new one.
func (s syncer) writeFile(path string, data []byte, perm os.FileMode, fileSync, dirSync string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return opErr("create temp", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return opErr("chmod", tmp.Name(), err)
	}
	if _, err := tmp.Write(data); err != nil {
		return opErr("write", tmp.Name(), err)
	}
	if err := s.fileSync(fileSync, tmp); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return opErr("close", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return opErr("rename", path, err)
	}
	ok = true
	if err := s.dirSync(dirSync, dir); err != nil {
		return fmt.Errorf("%s written but not yet durable: %w", path, err)
	}
	return nil
}
