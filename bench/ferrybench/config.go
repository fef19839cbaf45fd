package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Case names, as -cases takes them.
const (
	caseSync        = "sync"        // initial sync, delta cycle, delta bytes (one run feeds three rows)
	caseScan        = "scan"        // delta cycle on ext4: the hash-scan path
	caseRPO         = "rpo"         // RPO under churn
	caseStorage     = "storage"     // repository bytes after initial + N deltas
	caseDedup       = "dedup"       // repository bytes after protecting clones of one image
	caseMemory      = "memory"      // agent peak RSS during a large initial sync
	caseMaterialize = "materialize" // first failover of a point into a new sparse disk (nothing staged)
	caseRTO         = "rto"         // failover from a staged replica: small and large disk
	caseRoundTrip   = "roundtrip"   // reprotect bytes and time, failback RTO: small and large disk
	casePlanRTO     = "plan-rto"    // a recovery plan of 20 small machines in 4 groups vs its groups' slowest single failovers
	caseMany        = "many"        // many small machines on several agents: controller CPU per idle cycle, RPO under light churn
	caseWANSync     = "wan-sync"    // initial sync over a shaped link between two lab sites
	caseWANRPO      = "wan-rpo"     // RPO under churn over a shaped link between two lab sites
	casePGTrack     = "pgtrack"     // pgbench tps on a block device with and without the agent tracking and freezing it
)

var allCases = []string{caseSync, caseScan, caseRPO, caseStorage, caseDedup, caseMemory, caseMaterialize, caseRTO, caseRoundTrip, casePlanRTO,
	caseMany, caseWANSync, caseWANRPO, casePGTrack}

// Config is what one invocation measures. BENCHMARKS.md's values are the
// defaults; QuickConfig is the smoke run of `QUICK=1 make bench`.
type Config struct {
	Bin     string // directory holding ferry and ferry-agent
	Work    string // scratch directory: loop images, mounts, logs, profiles
	Results string // markdown file the report is written to ("" = none)

	Size    int64 // image size of every case but memory
	Runs    int   // runs per timed case; medians are over these
	MemSize int64 // image size of the agent-memory case
	RTOSize int64 // the large disk of the failover RTO and round-trip cases (the small one is Size)
	// FillLarge makes the round-trip case's large disk hold data across
	// its size (reflinked copies of the image) instead of the image and a
	// hole: re-protection hashes allocated data, so this shows how its time
	// grows with what the disk holds.
	FillLarge bool
	ChurnFor  time.Duration // how long the churn writer runs
	ChurnRate int64         // churn bytes per second (4 KiB random writes)
	Sample    time.Duration // RPO sampling period
	RPEvery   time.Duration // policy rp-every during churn
	// RPOBlockSize is the churn case's policy block size: a machine written
	// in small random pieces is protected with small blocks.
	RPOBlockSize int
	// TrackWrites runs the churn case's agent with --track-writes, its
	// image on an XFS mount of its own (the agent freezes it).
	TrackWrites bool
	Deltas      int           // delta cycles of the storage-efficiency case
	Machines    int           // clones protected in the dedup case
	Fraction    float64       // delta size as a fraction of the image
	BlockSize   int           // the policy's block size (the anchor of storage efficiency uses it too)
	Seed        uint64        // image seed; deltas derive theirs from it
	Poll        time.Duration // how often `points list` is polled while timing
	Stall       time.Duration // a wait for a point fails after this long without traffic

	// The many-machines case: ManyMachines small disks of ManyDiskSize on
	// ManyAgents agents, an idle phase and a light-churn phase of ManyPhase
	// each, every machine's writer at ManyRate bytes per second.
	ManyMachines int
	ManyAgents   int
	ManyDiskSize int64
	ManyPhase    time.Duration
	ManyRate     int64
	ManyLayout   string // a key of manyLayouts
	// XFSAGCount is the allocation groups of the bench's XFS mount (0:
	// mkfs.xfs's choice, 4 on these sizes). An experiment's knob: 20
	// groups did not shorten the many case's queue on one filesystem
	// (docs/benchmarks.md, "Where the images live").
	XFSAGCount int

	// The tracker-overhead case: pgbench at scale PGScale for PGFor per
	// run, PGPairs pairs of runs per comparison (many short pairs: the
	// shared machine's speed drifts by more than the effect).
	PGScale int
	PGFor   time.Duration
	PGPairs int

	Cases   []string // which cases to run (default all)
	Profile bool     // rerun MISS cases with --cpu-profile
	TopN    int      // profile entries kept per process

	Logger *slog.Logger // progress; nil discards
}

// DefaultConfig is the full run of BENCHMARKS.md.
func DefaultConfig() Config {
	return Config{
		Bin: "bin", Work: "bench/work",
		Size: 2 << 30, Runs: 3, MemSize: 16 << 30, RTOSize: 16 << 30,
		ChurnFor: 60 * time.Second, ChurnRate: 20_000_000, Sample: 100 * time.Millisecond, RPEvery: 2 * time.Second,
		Deltas: 10, Machines: 4, Fraction: 0.01, BlockSize: 64 << 10, Seed: 1,
		RPOBlockSize: 4 << 10, TrackWrites: true,
		Poll: 25 * time.Millisecond, Stall: 2 * time.Minute,
		ManyMachines: 50, ManyAgents: 5, ManyDiskSize: 64 << 20, ManyPhase: 60 * time.Second, ManyRate: 64 << 10, ManyLayout: "hosts",
		PGScale: 10, PGFor: 5 * time.Second, PGPairs: 16,
		Cases: slices.Clone(allCases), Profile: true, TopN: 15,
	}
}

// QuickConfig is a smoke run: every case, small sizes, one run.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Size, c.MemSize, c.RTOSize, c.Runs = 256<<20, 1<<30, 2<<30, 1
	c.ChurnFor, c.Deltas, c.Machines = 10*time.Second, 3, 4
	c.ManyPhase = 20 * time.Second
	c.PGScale, c.PGFor, c.PGPairs = 5, 3*time.Second, 2
	return c
}

// Validate checks the configuration and fills the logger.
func (c *Config) Validate() error {
	var errs []error
	if c.Bin == "" || c.Work == "" {
		errs = append(errs, errors.New("-bin and -work are required"))
	}
	if c.Size < 64<<20 || c.Size%int64(c.BlockSize) != 0 {
		errs = append(errs, fmt.Errorf("-size %d: want at least 64 MiB and a multiple of the block size", c.Size))
	}
	if c.MemSize < 64<<20 || c.MemSize%int64(c.BlockSize) != 0 {
		errs = append(errs, fmt.Errorf("-mem-size %d: want at least 64 MiB and a multiple of the block size", c.MemSize))
	}
	if c.RTOSize < c.Size || c.RTOSize%int64(c.BlockSize) != 0 {
		errs = append(errs, fmt.Errorf("-rto-size %d: want at least -size and a multiple of the block size", c.RTOSize))
	}
	if c.BlockSize < 4<<10 || c.BlockSize > 1<<20 || c.BlockSize&(c.BlockSize-1) != 0 {
		errs = append(errs, fmt.Errorf("block size %d: want a power of two from 4 KiB to 1 MiB", c.BlockSize))
	}
	if c.Runs < 1 || c.Deltas < 1 || c.Machines < 2 {
		errs = append(errs, errors.New("-runs and -deltas must be at least 1, -machines at least 2"))
	}
	if c.ChurnFor < time.Second || c.ChurnRate <= 0 || c.Sample <= 0 || c.RPEvery < time.Second {
		errs = append(errs, errors.New("-churn must be at least 1s, -churn-rate and the sampling period positive, rp-every at least 1s"))
	}
	if c.ManyAgents < 1 || c.ManyMachines < c.ManyAgents || c.ManyPhase < manyRPEvery || c.ManyRate <= 0 {
		errs = append(errs, fmt.Errorf("-many-machines %d, -many-agents %d, -many-phase %s, -many-rate %d: want at least one agent, a machine per agent, a phase of at least %s and a positive rate",
			c.ManyMachines, c.ManyAgents, c.ManyPhase, c.ManyRate, manyRPEvery))
	}
	if _, ok := manyLayouts[c.ManyLayout]; !ok {
		errs = append(errs, fmt.Errorf("many-machines layout %q: want one of %s", c.ManyLayout, manyLayoutNames()))
	}
	if c.ManyDiskSize < 4<<20 || c.ManyDiskSize%int64(max(c.BlockSize, c.RPOBlockSize)) != 0 {
		errs = append(errs, fmt.Errorf("many-machines disk size %d: want at least 4 MiB and a multiple of the block sizes", c.ManyDiskSize))
	}
	if c.PGScale < 1 || c.PGFor < time.Second || c.PGPairs < 1 {
		errs = append(errs, fmt.Errorf("-pg-scale %d, -pg-for %s, -pg-pairs %d: want a scale of at least 1, runs of at least 1s and a pair", c.PGScale, c.PGFor, c.PGPairs))
	}
	if c.Fraction <= 0 || c.Fraction > 0.5 {
		errs = append(errs, fmt.Errorf("delta fraction %g: want (0, 0.5]", c.Fraction))
	}
	if c.Stall < 10*time.Second {
		errs = append(errs, fmt.Errorf("-stall %s: want at least 10s", c.Stall))
	}
	if c.Poll < 5*time.Millisecond || c.Poll > 50*time.Millisecond {
		errs = append(errs, fmt.Errorf("poll period %s: BENCHMARKS.md wants 20–50 ms (5 ms at least)", c.Poll))
	}
	for _, k := range c.Cases {
		if !slices.Contains(allCases, k) {
			errs = append(errs, fmt.Errorf("-cases: unknown case %q (have %v)", k, allCases))
		}
	}
	if c.TopN < 1 {
		c.TopN = 15
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

func (c *Config) has(k string) bool { return slices.Contains(c.Cases, k) }

// xfsMkfsArgs are the extra mkfs.xfs arguments of the bench's XFS mount.
func (c Config) xfsMkfsArgs() []string {
	if c.XFSAGCount <= 0 {
		return nil
	}
	return []string{"-d", fmt.Sprintf("agcount=%d", c.XFSAGCount)}
}
