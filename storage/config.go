package storage

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Format versions of the repository as a whole (config, packs and index).
// See docs/storage-format.md "Changes".
const (
	FormatVersionMin     = 1
	FormatVersionMax     = 1
	FormatVersionCurrent = 1
)

const (
	configName = "config"
	indexName  = "index.db"
	packsDir   = "packs"
	locksDir   = "locks"
	lockName   = "repository.lock"
)

// repoConfig is the JSON of DIR/config.
type repoConfig struct {
	FormatVersion int       `json:"format_version"`
	RepoID        string    `json:"repo_id"` // 32 hex digits
	Created       time.Time `json:"created"`
	ChunkHash     string    `json:"chunk_hash"`           // "blake3"
	PackSize      int64     `json:"pack_size"`            // target size of a pack
	PublicKey     string    `json:"public_key,omitempty"` // 64 hex digits, when encrypted
}

func (c repoConfig) repoID() ([16]byte, error) {
	var id [16]byte
	b, err := hex.DecodeString(c.RepoID)
	if err != nil || len(b) != 16 {
		return id, fmt.Errorf("%w: config repo_id %q", ErrCorrupt, c.RepoID)
	}
	copy(id[:], b)
	return id, nil
}

func (c repoConfig) publicKey() (*PublicKey, error) {
	if c.PublicKey == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(c.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: config public_key: %v", ErrCorrupt, err)
	}
	return parsePublicKeyBytes(b)
}

func readConfig(dir string) (repoConfig, error) {
	var c repoConfig
	path := filepath.Join(dir, configName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, fmt.Errorf("%w: %s has no %s", ErrNotRepo, dir, configName)
	}
	if err != nil {
		return c, opErr("read", path, err)
	}
	// Decode the version first so a newer format is reported as such even
	// if the rest of the file changed shape.
	var v struct {
		FormatVersion int `json:"format_version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return c, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	if v.FormatVersion < FormatVersionMin || v.FormatVersion > FormatVersionMax {
		return c, &FormatVersionError{Subject: "repository", Path: dir, Found: v.FormatVersion, Min: FormatVersionMin, Max: FormatVersionMax}
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	if c.ChunkHash != "blake3" {
		return c, fmt.Errorf("%w: %s: chunk hash %q, want blake3", ErrCorrupt, path, c.ChunkHash)
	}
	if _, err := c.repoID(); err != nil {
		return c, err
	}
	if c.PackSize <= 0 {
		return c, fmt.Errorf("%w: %s: pack_size %d", ErrCorrupt, path, c.PackSize)
	}
	return c, nil
}
