package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/testenv"
)

// TestBenchKeepsBalancesAndLogsWallClockTimes runs a real cluster and a
// short pgbench: the balances agree, the log holds as many transactions as
// the report, and every logged end time lies within the run as this
// process's wall clock saw it (pgbench converts its monotonic clock to
// epoch times; the e2e test compares them with points' instants).
func TestBenchKeepsBalancesAndLogsWallClockTimes(t *testing.T) {
	testenv.RequireRoot(t)
	if why := Missing(); why != "" {
		testenv.Require(t, false, why)
	}
	ctx := context.Background()
	dir := t.TempDir()
	for _, d := range []string{"sock", "logs", "pg"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := Traversable(dir); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Data: filepath.Join(dir, "pg", "data"), Sock: filepath.Join(dir, "sock"), Port: 55431, Log: filepath.Join(dir, "pg", "server.log")}
	if err := c.Init(ctx, "fsync = off"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(context.Background(), "immediate") })
	if err := c.BenchInit(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := Chown(filepath.Join(dir, "logs")); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	res, err := c.Bench(ctx, BenchOptions{Clients: 2, Threads: 2, Duration: 2 * time.Second, LogDir: filepath.Join(dir, "logs")})
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.0f tps, %d transactions", res.TPS, res.Processed)
	if res.TPS <= 0 || res.Processed == 0 || int64(len(res.Txns)) != res.Processed {
		t.Fatalf("tps %.1f, %d processed, %d logged", res.TPS, res.Processed, len(res.Txns))
	}
	for _, x := range res.Txns {
		if x.Start().Before(before) || x.End.After(after) {
			t.Fatalf("a transaction logged %s → %s, outside the run %s → %s", x.Start().Format(time.StampMicro), x.End.Format(time.StampMicro),
				before.Format(time.StampMicro), after.Format(time.StampMicro))
		}
	}
	b, err := c.Balances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Holds() || b.Txns != res.Processed {
		t.Fatalf("balances %s after %d transactions", b, res.Processed)
	}
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
