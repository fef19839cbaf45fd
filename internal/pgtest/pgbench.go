package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// BenchInit creates pgbench's tables at scale factor scale (100 000
// accounts per unit) and vacuums them.
func (c *Cluster) BenchInit(ctx context.Context, scale int) error {
	_, err := run(ctx, "", "pgbench", "-h", c.Sock, "-p", strconv.Itoa(c.Port), "-i", "-q", "-s", strconv.Itoa(scale), "postgres")
	return err
}

// BenchOptions is one pgbench run of the default TPC-B-like script.
type BenchOptions struct {
	Clients, Threads int
	Duration         time.Duration // -T, rounded up to whole seconds
	// LogDir, when set, receives pgbench's per-transaction logs
	// (--log); Run reads them into BenchResult.Txns. The postgres user
	// must be able to write there.
	LogDir string
}

// BenchResult is what a pgbench run reported.
type BenchResult struct {
	TPS       float64 // without the initial connection time
	Processed int64   // transactions actually processed
	Txns      []Txn   // with LogDir: every transaction, as logged
	Output    string
}

// Txn is one transaction of pgbench's per-transaction log.
type Txn struct {
	End     time.Time     // when pgbench saw it end (its COMMIT answered)
	Latency time.Duration // from its first statement's send to End
	Failed  bool          // pgbench logged it failed (no latency then)
}

// Start is when the transaction's first statement was sent.
func (t Txn) Start() time.Time { return t.End.Add(-t.Latency) }

var (
	tpsRE       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	processedRE = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
)

// Bench runs pgbench with o and parses its report.
func (c *Cluster) Bench(ctx context.Context, o BenchOptions) (BenchResult, error) {
	secs := int((o.Duration + time.Second - 1) / time.Second)
	args := []string{"-h", c.Sock, "-p", strconv.Itoa(c.Port), "-c", strconv.Itoa(o.Clients), "-j", strconv.Itoa(o.Threads),
		"-T", strconv.Itoa(secs), "-n"}
	prefix := ""
	if o.LogDir != "" {
		prefix = filepath.Join(o.LogDir, "txn")
		args = append(args, "--log", "--log-prefix", prefix)
	}
	out, err := run(ctx, o.LogDir, "pgbench", append(args, "postgres")...)
	res := BenchResult{Output: out}
	if err != nil {
		return res, err
	}
	m, n := tpsRE.FindStringSubmatch(out), processedRE.FindStringSubmatch(out)
	if m == nil || n == nil {
		return res, fmt.Errorf("pgbench printed no tps or transaction count:\n%s", out)
	}
	res.TPS, _ = strconv.ParseFloat(m[1], 64)
	res.Processed, _ = strconv.ParseInt(n[1], 10, 64)
	if prefix != "" {
		if res.Txns, err = readTxnLogs(prefix); err != nil {
			return res, err
		}
		if int64(len(res.Txns)) < res.Processed {
			return res, fmt.Errorf("pgbench's logs hold %d transactions, its report %d", len(res.Txns), res.Processed)
		}
	}
	return res, nil
}

// readTxnLogs reads every log file pgbench wrote under prefix (one per
// thread: PREFIX.PID, PREFIX.PID.1, …).
func readTxnLogs(prefix string) ([]Txn, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("pgbench wrote no log under %s", prefix)
	}
	var txns []Txn
	for _, f := range files {
		t, err := readTxnLog(f)
		if err != nil {
			return nil, err
		}
		txns = append(txns, t...)
	}
	return txns, nil
}

// readTxnLog parses one log: per line "client_id transaction_no time
// script_no time_epoch time_us [schedule_lag] [retries]", time being the
// latency in microseconds, or a word (failed, serialization, deadlock)
// for a transaction that failed.
func readTxnLog(path string) ([]Txn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var txns []Txn
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 {
			return nil, fmt.Errorf("%s:%d: %q is not a pgbench transaction log line", path, line, sc.Text())
		}
		sec, err1 := strconv.ParseInt(fs[4], 10, 64)
		usec, err2 := strconv.ParseInt(fs[5], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		t := Txn{End: time.Unix(sec, usec*1000)}
		if lat, err := strconv.ParseInt(fs[2], 10, 64); err == nil {
			t.Latency = time.Duration(lat) * time.Microsecond
		} else {
			t.Failed = true
		}
		txns = append(txns, t)
	}
	return txns, sc.Err()
}

// Balances are the sums pgbench's transactions keep equal: each adds one
// delta to an account, its teller, its branch, and one history row.
type Balances struct {
	Accounts, Tellers, Branches, History int64
	Txns                                 int64 // history rows: committed transactions
}

// Holds reports whether the four sums agree.
func (b Balances) Holds() bool {
	return b.Accounts == b.Tellers && b.Tellers == b.Branches && b.Branches == b.History
}

func (b Balances) String() string {
	return fmt.Sprintf("accounts %d, tellers %d, branches %d, history %d (%d transactions)", b.Accounts, b.Tellers, b.Branches, b.History, b.Txns)
}

// Balances reads the sums in one statement (one snapshot).
func (c *Cluster) Balances(ctx context.Context) (Balances, error) {
	out, err := c.Query(ctx, `select (select sum(abalance) from pgbench_accounts), (select sum(tbalance) from pgbench_tellers),
		(select sum(bbalance) from pgbench_branches), (select coalesce(sum(delta), 0) from pgbench_history),
		(select count(*) from pgbench_history)`)
	if err != nil {
		return Balances{}, err
	}
	fs := strings.Split(out, "|")
	if len(fs) != 5 {
		return Balances{}, fmt.Errorf("balances: unexpected answer %q", out)
	}
	var v [5]int64
	for i, f := range fs {
		if v[i], err = strconv.ParseInt(f, 10, 64); err != nil {
			return Balances{}, fmt.Errorf("balances: %q: %w", out, err)
		}
	}
	return Balances{Accounts: v[0], Tellers: v[1], Branches: v[2], History: v[3], Txns: v[4]}, nil
}
