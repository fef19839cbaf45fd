package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// crashPlan is one run of the child and how it ends.
type crashPlan struct {
	failpoint string // end at this failpoint's hit-th call
	hit       int
	at        string        // or at this progress line ("created", "opened")
	events    int           // or after this many progress lines (w/c/p/g)
	delay     time.Duration // extra delay before the kill, for random moments
}

func (p crashPlan) String() string {
	switch {
	case p.failpoint != "":
		return fmt.Sprintf("failpoint %s#%d", p.failpoint, p.hit)
	case p.at != "":
		return "at " + p.at
	}
	return fmt.Sprintf("after %d events +%v", p.events, p.delay)
}

// childRun is the outcome of one child run.
type childRun struct {
	reported []int
	stopped  string // what ended it
}

// maxEvents bounds a run that never reaches its failpoint.
const maxEvents = 400

// runChildUntil starts the child and ends it per the plan: stop is called
// (SIGKILL, or a power cut then SIGKILL) when the plan's moment comes.
func runChildUntil(t *testing.T, cfg childConfig, pl crashPlan, stop func(p *os.Process)) (childRun, error) {
	t.Helper()
	if pl.failpoint != "" {
		cfg.Failpoint, cfg.FailHit = pl.failpoint, pl.hit
	}
	cfg.StopAt = pl.at
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return childRun{}, err
	}
	if err := cmd.Start(); err != nil {
		return childRun{}, err
	}
	var run childRun
	var once sync.Once
	doStop := func(why string) {
		once.Do(func() {
			run.stopped = why
			stop(cmd.Process)
		})
	}
	sc := bufio.NewScanner(out)
	events := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "c":
			k, _ := strconv.Atoi(f[1])
			run.reported = append(run.reported, k)
		case "fp":
			if pl.failpoint != "" && f[1] == pl.failpoint {
				doStop("failpoint " + f[1])
			}
			continue
		case "created", "opened":
			if pl.at == f[0] {
				doStop("at " + f[0])
			}
			continue
		}
		events++
		if pl.failpoint == "" && pl.at == "" && events == pl.events {
			if pl.delay > 0 {
				time.AfterFunc(pl.delay, func() { doStop("random moment") })
			} else {
				doStop("random moment")
			}
		}
		if events >= maxEvents {
			doStop("event limit")
		}
	}
	err = cmd.Wait()
	// A stop from the timer's goroutine has completed by now (the child
	// exits only once killed); this Do makes its writes (run.stopped, and
	// what stop set) visible here. If no stop ran, it prevents a late one.
	once.Do(func() {})
	if run.stopped == "" {
		return run, fmt.Errorf("child exited by itself (%v): %s", err, stderr.String())
	}
	if run.stopped == "event limit" {
		return run, fmt.Errorf("plan %v: moment not reached in %d events", pl, maxEvents)
	}
	return run, nil
}

// crashPlans returns the named failpoints plus n random moments.
// Compaction touches only plain repositories (what the controller builds
// in an encrypted one is zstd at once), so only their runs reach its
// failpoint.
func crashPlans(rng *rand.Rand, n int, encrypted bool) []crashPlan {
	var pls []crashPlan
	fps := []string{FailPackAppended, FailPackSynced, FailIndexCommited, FailPackSealed, FailGCRepack, FailGCDelete, FailPruneMid}
	if !encrypted {
		fps = append(fps, FailCompactStep)
	}
	for _, fp := range fps {
		pls = append(pls, crashPlan{failpoint: fp, hit: 1 + rng.IntN(3)})
	}
	for i := 0; i < n; i++ {
		pls = append(pls, crashPlan{events: 1 + rng.IntN(12), delay: time.Duration(rng.IntN(3000)) * time.Microsecond})
	}
	rng.Shuffle(len(pls), func(i, j int) { pls[i], pls[j] = pls[j], pls[i] })
	return pls
}

// TestCrashKill SIGKILLs a child that commits points in a loop, at random
// moments and at every named failpoint, and checks the repository after
// each kill.
func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary ~30 times")
	}
	ctx := context.Background()
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 1))
			dir := t.TempDir()
			keyDir := t.TempDir()
			cfg := childConfig{Dir: dir, KeyDir: keyDir, Create: true, Encrypted: enc, PackSize: MinPackSize}
			oo := OpenOptions{Logger: testLogger(t)}
			reported := map[int]bool{}
			maxRep, floor := 0, 0
			plans := append([]crashPlan{{at: "opened"}}, crashPlans(rng, 22, enc)...)
			for i, pl := range plans {
				run, err := runChildUntil(t, cfg, pl, func(p *os.Process) { p.Kill() })
				require.NoError(t, err, "run %d (%v)", i, pl)
				cfg.Create = false
				for _, k := range run.reported {
					reported[k] = true
					maxRep = max(maxRep, k)
				}
				if enc && oo.PrivateKey == nil {
					k, err := LoadPrivateKeyFile(keyDir + "/repo.key")
					require.NoError(t, err)
					oo.PrivateKey = k
				}
				newest, err := wlCheck(ctx, dir, oo, reported, max(floor, maxRep))
				require.NoError(t, err, "after run %d (%v, %s)", i, pl, run.stopped)
				floor = newest
				t.Logf("run %d: %v: %s, %d commits reported, newest k=%d", i, pl, run.stopped, len(run.reported), maxRep)
			}
			require.Greater(t, maxRep, 20, "the child must have made progress")
		})
	}
}
