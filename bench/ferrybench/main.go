package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// parseFlags fills a Config from the command line; -quick starts from
// QuickConfig and the other flags still override it.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	quick := false
	for _, a := range args {
		if a == "-quick" || a == "--quick" || a == "-quick=true" || a == "--quick=true" {
			quick = true
		}
	}
	cfg := DefaultConfig()
	if quick {
		cfg = QuickConfig()
	}
	fs := flag.NewFlagSet("ferrybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Bool("quick", false, "smoke run: small sizes, one run (the other flags still apply)")
	fs.StringVar(&cfg.Bin, "bin", cfg.Bin, "directory holding ferry and ferry-agent (make build)")
	fs.StringVar(&cfg.Work, "work", cfg.Work, "scratch directory for loop images, mounts, logs and profiles")
	fs.StringVar(&cfg.Results, "results", cfg.Results, "also write the report to this markdown file")
	fs.Int64Var(&cfg.Size, "size", cfg.Size, "image size in bytes (all cases but memory)")
	fs.IntVar(&cfg.Runs, "runs", cfg.Runs, "runs per timed case (medians)")
	fs.Int64Var(&cfg.MemSize, "mem-size", cfg.MemSize, "image size in bytes of the agent-memory case")
	fs.Int64Var(&cfg.RTOSize, "rto-size", cfg.RTOSize, "size in bytes of the large disk of the failover RTO case (the small one is -size)")
	fs.BoolVar(&cfg.FillLarge, "fill-large", cfg.FillLarge, "round trip: the large disk holds copies of the image across its size (default: the image and a hole)")
	fs.DurationVar(&cfg.ChurnFor, "churn", cfg.ChurnFor, "how long the churn writer runs in the RPO case")
	fs.IntVar(&cfg.BlockSize, "block-size", cfg.BlockSize, "the policy's block size in bytes (a power of two, 4 KiB to 1 MiB)")
	fs.Int64Var(&cfg.ChurnRate, "churn-rate", cfg.ChurnRate, "churn rate in bytes per second")
	fs.IntVar(&cfg.RPOBlockSize, "rpo-block-size", cfg.RPOBlockSize, "the RPO case's policy block size in bytes")
	fs.BoolVar(&cfg.TrackWrites, "track-writes", cfg.TrackWrites, "RPO case: the agent runs with --track-writes (tracked freezes instead of reflink views)")
	fs.IntVar(&cfg.Deltas, "deltas", cfg.Deltas, "delta cycles of the storage-efficiency case")
	fs.IntVar(&cfg.Machines, "machines", cfg.Machines, "clones protected in the dedup case")
	fs.IntVar(&cfg.ManyMachines, "many-machines", cfg.ManyMachines, "machines of the many-machines case")
	fs.IntVar(&cfg.ManyAgents, "many-agents", cfg.ManyAgents, "agents the many-machines case spreads its machines over")
	fs.DurationVar(&cfg.ManyPhase, "many-phase", cfg.ManyPhase, "length of each phase (idle, light churn) of the many-machines case")
	fs.IntVar(&cfg.XFSAGCount, "xfs-agcount", cfg.XFSAGCount, "allocation groups of the bench's XFS mount (0: mkfs.xfs's choice); an experiment's knob")
	fs.StringVar(&cfg.ManyLayout, "many-layout", cfg.ManyLayout, "where the many-machines case keeps its images: "+manyLayoutNames()+" (see many_layout.go)")
	fs.Int64Var(&cfg.ManyRate, "many-rate", cfg.ManyRate, "churn bytes per second per machine in the many-machines case")
	fs.IntVar(&cfg.PGScale, "pg-scale", cfg.PGScale, "pgbench scale factor of the tracker-overhead case (pgtrack)")
	fs.DurationVar(&cfg.PGFor, "pg-for", cfg.PGFor, "length of each pgbench run of the tracker-overhead case (pgtrack)")
	fs.IntVar(&cfg.PGPairs, "pg-pairs", cfg.PGPairs, "pairs of pgbench runs per comparison of the tracker-overhead case (pgtrack)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "workload seed")
	fs.DurationVar(&cfg.Poll, "poll", cfg.Poll, "how often points are polled while timing (20–50 ms)")
	fs.DurationVar(&cfg.Stall, "stall", cfg.Stall, "fail a wait for a point after this long with (almost) no traffic, dumping the processes' stacks")
	fs.BoolVar(&cfg.Profile, "profile", cfg.Profile, "rerun each MISS under --cpu-profile and report the top entries")
	fs.IntVar(&cfg.TopN, "top", cfg.TopN, "profile entries reported per process and view")
	cases := fs.String("cases", strings.Join(cfg.Cases, ","), "comma-separated cases to run, of "+strings.Join(allCases, ","))
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	cfg.Cases = strings.Split(*cases, ",")
	return cfg, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "ferrybench:", err)
		return 2
	}
	b, err := newBench(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "ferrybench:", err)
		return 1
	}
	started := time.Now()
	runErr := b.run(ctx)
	var w strings.Builder
	b.report(&w, started)
	fmt.Fprint(stdout, w.String())
	if cfg.Results != "" {
		if err := os.WriteFile(cfg.Results, []byte(w.String()), 0o644); err != nil {
			fmt.Fprintln(stderr, "ferrybench:", err)
			return 1
		}
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "ferrybench:", runErr)
		return 1
	}
	return 0
}
