package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/storage/internal/powercut"
	"github.com/stretchr/testify/require"
)

// powerLoop runs the workload on a powercut FUSE filesystem and cuts power
// at each plan's moment: the filesystem keeps only what was fsync'd, then
// is remounted from that state and checked. It returns the first violation
// of the guarantees (or a harness error).
func powerLoop(t *testing.T, enc bool, skipSync string, plans []crashPlan) error {
	ctx := context.Background()
	mnt := t.TempDir()
	m, err := powercut.New(mnt)
	if err != nil {
		return err
	}
	defer func() {
		if m != nil {
			m.Unmount()
		}
	}()
	dir := filepath.Join(mnt, "repo")
	keyDir := filepath.Join(mnt, "keys")
	for _, d := range []string{dir, keyDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := (syncer{}).dirSync("test", mnt); err != nil {
		return err
	}
	cfg := childConfig{Dir: dir, KeyDir: keyDir, Create: true, Exclusive: true, Encrypted: enc, SkipSync: skipSync, PackSize: MinPackSize}
	reported := map[int]bool{}
	maxRep, floor := 0, 0
	for i, pl := range plans {
		var im *powercut.Image
		run, err := runChildUntil(t, cfg, pl, func(p *os.Process) {
			im = m.Cut()
			p.Kill()
		})
		if err != nil {
			return fmt.Errorf("run %d (%v): %w", i, pl, err)
		}
		if i == 0 {
			st := m.Stats()
			if st.Names["index.db-shm"] {
				return fmt.Errorf("the index made a -shm file although opened with ExclusiveLock")
			}
		}
		if err := m.Unmount(); err != nil {
			return err
		}
		m = nil
		if m, err = powercut.MountImage(mnt, im); err != nil {
			return err
		}
		cfg.Create = false
		for _, k := range run.reported {
			reported[k] = true
			maxRep = max(maxRep, k)
		}
		oo := OpenOptions{ExclusiveLock: true, Logger: testLogger(t)}
		if enc {
			k, err := LoadPrivateKeyFile(filepath.Join(keyDir, "repo.key"))
			if err != nil {
				return fmt.Errorf("after cut %d (%v): %w", i, pl, violation(repoLost, 0, "key file: %w", err))
			}
			oo.PrivateKey = k
		}
		newest, err := wlCheck(ctx, dir, oo, reported, max(floor, maxRep))
		if err != nil {
			return fmt.Errorf("after cut %d (%v, %s, newest reported k=%d): %w", i, pl, run.stopped, maxRep, err)
		}
		floor = newest
		t.Logf("cut %d: %v: %s, %d commits reported, newest k=%d", i, pl, run.stopped, len(run.reported), maxRep)
	}
	if maxRep < 15 {
		return fmt.Errorf("the child made too little progress (newest k=%d)", maxRep)
	}
	return nil
}

// powerPlans: a cut right after Create, then every failpoint and n random
// moments.
func powerPlans(rng *rand.Rand, n int, encrypted bool) []crashPlan {
	return append([]crashPlan{{at: "created"}, {at: "opened"}}, crashPlans(rng, n, encrypted)...)
}

// TestPowerLoss cuts power >= 20 times at random moments and at every named
// failpoint; every point whose Commit returned must survive each cut.
func TestPowerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("power-loss test re-executes the test binary ~30 times")
	}
	ok, why := powercut.Available()
	requireCapability(t, ok, why)
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			require.NoError(t, powerLoop(t, enc, "", powerPlans(rand.New(rand.NewPCG(seed, 2)), 21, enc)))
		})
	}
}

// TestPowerLossCatchesEachMissingFsync removes one named fsync at a time
// and requires the power-loss loop to detect a violation: every fsync on
// the write paths is needed, and the test would notice its loss.
func TestPowerLossCatchesEachMissingFsync(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the power-loss loop once per named fsync")
	}
	ok, why := powercut.Available()
	requireCapability(t, ok, why)
	// What losing each fsync breaks (docs/crash-semantics.md): the test
	// requires that violation, not any error — a harness failure (FUSE not
	// mounting, the child dying, too little progress) does not count.
	want := map[string][]violationKind{
		syncConfigFile: {repoLost},
		syncConfigDir:  {repoLost},
		syncKeyFile:    {repoLost},
		syncKeyDir:     {repoLost},
		// Without these the index may name a pack whose directory entry
		// the cut lost: the point is gone, or the repository refuses to
		// open (a pack it indexes is not there), depending on where the
		// cut fell (seen: seed 1796287777637167639, pack.create).
		syncPackMkdir:  {pointMissing, pointWrong, repoLost},
		syncPackCreate: {pointMissing, pointWrong, repoLost},
		// Without it the index may name pack bytes the cut lost: the point
		// is gone, or the repository refuses to open (a pack that does not
		// scan to its indexed size), depending on where the cut fell.
		syncPackAppend: {pointMissing, pointWrong, repoLost},
		syncPackSeal:   {damaged},
	}
	for _, name := range syncPoints() {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, want, name, "fsync %q has no expected violation: add it to the table", name)
			enc := name == syncKeyFile || name == syncKeyDir
			seed := uint64(time.Now().UnixNano())
			err := powerLoop(t, enc, name, powerPlans(rand.New(rand.NewPCG(seed, 3)), 21, enc))
			require.Error(t, err, "removing fsync %q went unnoticed (seed %d)", name, seed)
			var v *violationError
			require.ErrorAs(t, err, &v, "removing fsync %q: the loop failed, but not with a durability violation (seed %d): %v", name, seed, err)
			require.Contains(t, want[name], v.kind, "removing fsync %q: unexpected violation (seed %d): %v", name, seed, err)
			t.Logf("without %s: %s: %v", name, v.kind, err)
		})
	}
}
