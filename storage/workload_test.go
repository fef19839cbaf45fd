package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// The crash and power-loss tests run this workload in a child process (a
// re-exec of the test binary selected by childEnv) and check the repository
// against a deterministic model after killing it or cutting its power.

const (
	childEnv     = "FERRY_STORAGE_TEST_CHILD"
	wlMachine    = "m1"
	wlBlocks     = 48
	wlBlockSize  = 4096
	wlKeep       = 10 // points kept by the child's retention
	wlPoolChunks = 6  // shared contents, so writes dedup (and hash-only writes happen)
)

var wlBase = time.Unix(1_700_000_000, 0)

func wlInstant(k int) time.Time { return wlBase.Add(time.Duration(k) * time.Second) }

// childConfig is passed to the child as JSON in childEnv.
type childConfig struct {
	Dir       string `json:"dir"`
	KeyDir    string `json:"key_dir,omitempty"` // encrypted repos: where the key files live
	Create    bool   `json:"create"`
	Exclusive bool   `json:"exclusive"`
	Failpoint string `json:"failpoint,omitempty"`
	FailHit   int    `json:"fail_hit,omitempty"`
	StopAt    string `json:"stop_at,omitempty"` // "created" or "opened": wait there to be killed
	SkipSync  string `json:"skip_sync,omitempty"`
	Encrypted bool   `json:"encrypted"`
	PackSize  int64  `json:"pack_size"`
}

// wlWrite is one block the workload writes in commit k.
type wlWrite struct {
	block int64
	kind  int // 0 unique chunk, 1 pool chunk, 2 zero, 3 patch
	pool  int
	seed  uint64
}

// wlCommit lists commit k's writes: six distinct blocks.
func wlCommit(k int) []wlWrite {
	rng := rand.New(rand.NewPCG(uint64(k), 77))
	seen := map[int64]bool{}
	var ws []wlWrite
	for len(ws) < 6 {
		b := int64(rng.IntN(wlBlocks))
		if seen[b] {
			continue
		}
		seen[b] = true
		w := wlWrite{block: b, kind: rng.IntN(4), pool: rng.IntN(wlPoolChunks), seed: uint64(k)*1000 + uint64(b)}
		if k == 1 && w.kind == 3 {
			w.kind = 0
		}
		ws = append(ws, w)
	}
	return ws
}

func wlPool(i int) []byte { return content(uint64(5000+i*3), wlBlockSize) } // seed%3==... varied kinds

// apply returns block content after write w given the previous content.
func (w wlWrite) apply(prev []byte) []byte {
	switch w.kind {
	case 0:
		return content(w.seed, wlBlockSize)
	case 1:
		return wlPool(w.pool)
	case 2:
		return make([]byte, wlBlockSize)
	default:
		out := append([]byte(nil), prev...)
		copy(out[100:], content(w.seed, 300))
		return out
	}
}

// wlModel returns the disk image after commits 1..k.
func wlModel(k int) []byte {
	img := make([]byte, wlBlocks*wlBlockSize)
	for j := 1; j <= k; j++ {
		for _, w := range wlCommit(j) {
			off := w.block * wlBlockSize
			copy(img[off:], w.apply(img[off:off+wlBlockSize]))
		}
	}
	return img
}

func wlDisks() []DiskSpec {
	return []DiskSpec{{Name: "d0", Size: wlBlocks * wlBlockSize, BlockSize: wlBlockSize}}
}

// runChild is the child process: it commits points in a loop, reporting
// each on stdout only after Commit returned, with retention and GC.
func runChild(cfgJSON string) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return err
	}
	ctx := context.Background()
	say := func(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) }
	sy := syncer{skip: cfg.SkipSync}
	hits := map[string]int{}
	fail := func(name string) {
		if name != cfg.Failpoint {
			return
		}
		hits[name]++
		if hits[name] != cfg.FailHit {
			return
		}
		say("fp %s", name)
		select {} // wait for the kill or the power cut
	}
	var priv *PrivateKey
	if cfg.Create {
		co := CreateOptions{PackSize: cfg.PackSize, sync: sy}
		if cfg.Encrypted {
			k, err := GenerateKey()
			if err != nil {
				return err
			}
			if err := sy.writeFile(filepath.Join(cfg.KeyDir, "repo.key"), k.MarshalPEM(), 0o600, syncKeyFile, syncKeyDir); err != nil {
				return err
			}
			co.PublicKey = k.Public()
		}
		if err := Create(ctx, cfg.Dir, co); err != nil {
			return err
		}
		say("created")
		if cfg.StopAt == "created" {
			select {} // nothing may happen after this moment before the cut
		}
	}
	if cfg.Encrypted {
		k, err := LoadPrivateKeyFile(filepath.Join(cfg.KeyDir, "repo.key"))
		if err != nil {
			return err
		}
		priv = k
	}
	r, err := Open(ctx, cfg.Dir, OpenOptions{PrivateKey: priv, ExclusiveLock: cfg.Exclusive, Failpoint: fail, sync: sy})
	if err != nil {
		return err
	}
	say("opened")
	if cfg.StopAt == "opened" {
		select {}
	}
	last := 0
	pts, err := r.Points(ctx, wlMachine)
	if err != nil {
		return err
	}
	if len(pts) > 0 {
		if last, err = wlParseName(pts[len(pts)-1].Name); err != nil {
			return err
		}
	}
	img := wlModel(last)
	for k := last + 1; ; k++ {
		p, err := r.BeginPoint(ctx, wlMachine, wlDisks())
		if err != nil {
			return err
		}
		ws := wlCommit(k)
		var bws []BlockWrite
		for _, w := range ws {
			off := w.block * wlBlockSize
			data := w.apply(img[off : off+wlBlockSize])
			h := Hash(blake3.Sum256(data))
			switch {
			case w.kind == 2:
				bws = append(bws, BlockWrite{Disk: "d0", Block: w.block, Zero: true})
			case w.kind == 3:
				bws = append(bws, BlockWrite{Disk: "d0", Block: w.block, Hash: h, Patch: []PatchRun{{Offset: 100, Data: data[100:400]}}})
			case w.kind == 1:
				has, err := r.HasChunks(ctx, []Hash{h})
				if err != nil {
					return err
				}
				if has[0] {
					bws = append(bws, BlockWrite{Disk: "d0", Block: w.block, Hash: h})
				} else {
					bws = append(bws, chunkWrite("d0", w.block, data))
				}
			default:
				bws = append(bws, chunkWrite("d0", w.block, data))
			}
			copy(img[off:], data)
		}
		// Patches read the pending point's rows, so they go after the rest
		// of the batch is stored; two Writes also give mid-point kills.
		var first, second []BlockWrite
		for _, bw := range bws {
			if bw.Patch != nil {
				second = append(second, bw)
			} else {
				first = append(first, bw)
			}
		}
		if err := p.Write(ctx, first); err != nil {
			return fmt.Errorf("write k=%d: %w", k, err)
		}
		say("w %d", k)
		if len(second) > 0 {
			pp := p
			if err := pp.Write(ctx, second); err != nil {
				return fmt.Errorf("patch k=%d: %w", k, err)
			}
		}
		pt, err := p.Commit(ctx, CommitInfo{Instant: wlInstant(k), Consistency: CrashConsistent, Name: fmt.Sprintf("k=%d", k)})
		if err != nil {
			return fmt.Errorf("commit k=%d: %w", k, err)
		}
		say("c %d %d", k, pt.ID)
		if k%3 == 0 {
			if _, err := r.Prune(ctx, wlMachine, wlInstant(k-wlKeep+1)); err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			say("p %d", k)
		}
		if k%5 == 0 {
			if _, err := r.GC(ctx, GCOptions{RepackBelow: 0.8}); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			say("g %d", k)
		}
	}
}

func wlParseName(name string) (int, error) {
	s, ok := strings.CutPrefix(name, "k=")
	if !ok {
		return 0, fmt.Errorf("point name %q is not the workload's", name)
	}
	return strconv.Atoi(s)
}

// violationKind names the guarantee of docs/crash-semantics.md that a
// crash or power cut broke.
type violationKind string

const (
	// repoLost: Create returned, yet the repository or its key file does
	// not open after the cut.
	repoLost violationKind = "repository lost"
	// pointMissing: a point whose Commit returned is absent or unreadable
	// (the repository no longer opens after commits were reported counts).
	pointMissing violationKind = "committed point missing"
	// pointWrong: a point reads back other bytes or another instant than
	// committed, or a point that was never committed is visible.
	pointWrong violationKind = "committed point wrong"
	// damaged: Verify, or a rebuild from the packs alone, finds
	// acknowledged data damaged.
	damaged violationKind = "acknowledged data damaged"
)

// violationError is a broken durability guarantee, as opposed to a failure
// of the harness (mount, child process, too little progress): the crash
// tests require one of these, of a specific kind, and nothing else.
type violationError struct {
	kind violationKind
	k    int // the commit concerned; 0 when none
	err  error
}

func (e *violationError) Error() string {
	if e.k > 0 {
		return fmt.Sprintf("%s (k=%d): %v", e.kind, e.k, e.err)
	}
	return fmt.Sprintf("%s: %v", e.kind, e.err)
}

func (e *violationError) Unwrap() error { return e.err }

func violation(kind violationKind, k int, format string, args ...any) error {
	return &violationError{kind: kind, k: k, err: fmt.Errorf(format, args...)}
}

// wlCheck opens the repository and checks the guarantees after a crash:
// every point reads back byte-exact against the model, every reported
// commit that retention keeps is present, nothing else is visible, and
// Verify is clean. It returns the first violation.
// floor is the newest commit known to exist (reported, or seen by the
// previous check): each run may add at most one unreported commit.
func wlCheck(ctx context.Context, dir string, oo OpenOptions, reported map[int]bool, floor int) (int, error) {
	newest, err := wlCheckPoints(ctx, dir, oo, reported, floor)
	return newest, err
}

func wlCheckPoints(ctx context.Context, dir string, oo OpenOptions, reported map[int]bool, floor int) (newest int, err error) {
	r, err := Open(ctx, dir, oo)
	if err != nil {
		if len(reported) == 0 && floor == 0 {
			return 0, violation(repoLost, 0, "open after crash: %w", err)
		}
		return 0, violation(pointMissing, floor, "open after crash: %w", err)
	}
	defer r.Close()
	pts, err := r.Points(ctx, wlMachine)
	if err != nil {
		return 0, violation(pointMissing, floor, "list points: %w", err)
	}
	present := map[int]bool{}
	for _, pt := range pts {
		k, err := wlParseName(pt.Name)
		if err != nil {
			return 0, violation(pointWrong, 0, "point %d: %w", pt.ID, err)
		}
		if present[k] {
			return 0, violation(pointWrong, k, "commit k=%d present twice", k)
		}
		present[k] = true
		newest = max(newest, k)
		if !pt.Instant.Equal(wlInstant(k)) {
			return 0, violation(pointWrong, k, "point k=%d has instant %v", k, pt.Instant)
		}
		d, err := r.OpenDisk(ctx, pt.ID, "d0")
		if err != nil {
			return 0, violation(pointMissing, k, "open disk of k=%d: %w", k, err)
		}
		var buf bytes.Buffer
		if _, err := d.WriteTo(&buf); err != nil {
			return 0, violation(pointMissing, k, "read k=%d: %w", k, err)
		}
		if !bytes.Equal(buf.Bytes(), wlModel(k)) {
			return 0, violation(pointWrong, k, "point k=%d (id %d) does not read back byte-exact", k, pt.ID)
		}
	}
	if newest < floor {
		return 0, violation(pointMissing, floor, "newest point k=%d, but k=%d is known to exist", newest, floor)
	}
	if newest > floor+1 {
		return 0, violation(pointWrong, newest, "newest point k=%d, but k=%d is the newest known and a run adds at most one unreported commit", newest, floor)
	}
	for k := range reported {
		if k > newest-wlKeep+1 && !present[k] {
			return 0, violation(pointMissing, k, "reported commit k=%d is missing (newest k=%d)", k, newest)
		}
	}
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil {
		return 0, violation(damaged, 0, "verify: %w", err)
	}
	if len(rep.Damaged) > 0 {
		return 0, violation(damaged, 0, "verify found damage: %w", errors.Join(damageErrs(rep)...))
	}
	if err := r.Close(); err != nil {
		return 0, err
	}
	return newest, wlCheckRebuild(ctx, dir, oo, pts)
}

// wlCheckRebuild rebuilds a copy of the repository from its packs alone
// and requires the same points with the same contents.
func wlCheckRebuild(ctx context.Context, dir string, oo OpenOptions, want []Point) error {
	cp, err := os.MkdirTemp("", "ferry-rebuild-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cp)
	if err := copyRepoFiles(dir, cp); err != nil {
		return err
	}
	if _, err := Rebuild(ctx, cp, OpenOptions{}); err != nil {
		return violation(damaged, 0, "rebuild: %w", err)
	}
	oo.ExclusiveLock = false
	r, err := Open(ctx, cp, oo)
	if err != nil {
		return violation(damaged, 0, "open rebuilt: %w", err)
	}
	defer r.Close()
	got, err := r.Points(ctx, wlMachine)
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return violation(damaged, 0, "rebuild restored %d points, the index has %d", len(got), len(want))
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Name != want[i].Name {
			return violation(damaged, 0, "rebuild restored point %d %q, the index has %d %q", got[i].ID, got[i].Name, want[i].ID, want[i].Name)
		}
		k, _ := wlParseName(got[i].Name)
		d, err := r.OpenDisk(ctx, got[i].ID, "d0")
		if err != nil {
			return violation(damaged, k, "rebuilt k=%d: %w", k, err)
		}
		var buf bytes.Buffer
		if _, err := d.WriteTo(&buf); err != nil {
			return violation(damaged, k, "rebuilt k=%d: %w", k, err)
		}
		if !bytes.Equal(buf.Bytes(), wlModel(k)) {
			return violation(damaged, k, "rebuilt point k=%d does not read back byte-exact", k)
		}
	}
	return nil
}

// copyRepoFiles copies config and packs (not the index) of a repository.
func copyRepoFiles(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if strings.HasPrefix(rel, indexName) || strings.HasPrefix(rel, locksDir) {
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
}

func damageErrs(rep VerifyReport) []error {
	var out []error
	for _, d := range rep.Damaged {
		out = append(out, fmt.Errorf("pack %s offset %d: %w", d.Pack, d.Offset, d.Err))
	}
	return out
}

// TestMain runs the child role when selected.
func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		if err := runChild(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	// STORAGE_RECENT_LIMIT runs the package with another fold threshold
	// of the index's recent level: 1 folds after every write (every row
	// in the main tables, as before the level), a large value never
	// folds on its own (every read merges the level).
	if v := os.Getenv("STORAGE_RECENT_LIMIT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "STORAGE_RECENT_LIMIT:", err)
			os.Exit(2)
		}
		defaultRecentLimit = n
	}
	os.Exit(m.Run())
}
