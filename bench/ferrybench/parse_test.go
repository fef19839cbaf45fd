package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

func TestParseLogfmt(t *testing.T) {
	l := parseLogfmt(`time=2026-11-26T01:08:56.659Z level=INFO msg="point committed" component=controller component=ingest machine=m point=2 note="a \"quoted\" note" empty=""`)
	require.Equal(t, "point committed", l["msg"])
	require.Equal(t, "ingest", l["component"], "the last of a repeated key wins")
	require.Equal(t, `a "quoted" note`, l["note"])
	require.Equal(t, "", l["empty"])
	id, err := l.Int("point")
	require.NoError(t, err)
	require.Equal(t, int64(2), id)
	_, err = l.Int("missing")
	require.Error(t, err)
	ts, err := l.Time()
	require.NoError(t, err)
	require.Equal(t, 659*time.Millisecond, time.Duration(ts.Nanosecond()))

	require.Nil(t, parseLogfmt("ferry controller listening on 127.0.0.1:1 (admin x)"))
	require.Nil(t, parseLogfmt(`msg="unterminated`))
	require.Nil(t, parseLogfmt(""))
}

func TestCycleTimes(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "controller-1.log")
	require.NoError(t, os.WriteFile(log, []byte(`time=2026-11-26T01:00:00.000Z level=INFO msg="cycle begins" machine=m pending=1
time=2026-11-26T01:00:00.100Z level=INFO msg="cycle begins" machine=other pending=9
time=2026-11-26T01:00:02.500Z level=INFO msg="point committed" machine=m point=1
ferry controller listening on 127.0.0.1:1
time=2026-11-26T01:00:03.000Z level=INFO msg="cycle begins" machine=m pending=2
time=2026-11-26T01:00:03.250Z level=INFO msg="point committed" machine=m point=2
time=2026-11-26T01:00:04.000Z level=INFO msg="point committed" machine=other point=9
`), 0o644))
	lines, err := readLog(log, "cycle begins", "point committed")
	require.NoError(t, err)
	require.Len(t, lines, 6)
	require.Equal(t, map[int64]time.Duration{1: 2500 * time.Millisecond, 2: 250 * time.Millisecond}, cycleTimes(lines, "m"))
	require.Equal(t, map[int64]time.Duration{9: 3900 * time.Millisecond}, cycleTimes(lines, "other"))
}

func TestParseTotalSent(t *testing.T) {
	stats := "Number of files: 1 (reg: 1)\nTotal file size: 2,147,483,648 bytes\nTotal bytes sent: 241,234,567\nTotal bytes received: 1,048,611\n"
	n, err := parseTotalSent(stats)
	require.NoError(t, err)
	require.Equal(t, int64(241234567), n)
	_, err = parseTotalSent("Total bytes received: 12\n")
	require.Error(t, err)
}

func TestBlocksReader(t *testing.T) {
	data := make([]byte, 10*16)
	for i := range data {
		data[i] = byte(i / 16)
	}
	// The last block is short: it is padded with zeros to the block size.
	got, err := io.ReadAll(blocksReader(bytes.NewReader(data[:9*16+4]), []int64{1, 3, 9}, 16))
	require.NoError(t, err)
	want := append(append(bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{3}, 16)...), append(bytes.Repeat([]byte{9}, 4), make([]byte, 12)...)...)
	require.Equal(t, want, got)
}

func TestSameContent(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	data := bytes.Repeat([]byte("ferry"), 500_000)
	require.NoError(t, os.WriteFile(a, data, 0o644))
	require.NoError(t, os.WriteFile(b, data, 0o644))
	require.NoError(t, sameContent(a, b))
	data[2_000_000] ^= 1
	require.NoError(t, os.WriteFile(c, data, 0o644))
	require.Error(t, sameContent(a, c))
	require.NoError(t, os.WriteFile(c, data[:100], 0o644))
	require.Error(t, sameContent(a, c))
}

func TestProcStatusAndUsage(t *testing.T) {
	pid := os.Getpid()
	hwm, err := procStatus(pid, "VmHWM")
	require.NoError(t, err)
	require.Greater(t, hwm, int64(1<<20))
	_, err = procStatus(pid, "NoSuchField")
	require.Error(t, err)
	u, err := procUsage(pid)
	require.NoError(t, err)
	require.GreaterOrEqual(t, u.CPU, time.Duration(0))
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{DefaultConfig(), QuickConfig()} {
		require.NoError(t, cfg.Validate())
	}
	bad := DefaultConfig()
	bad.Size, bad.Poll, bad.Cases = 1000, time.Second, []string{"sync", "nope"}
	bad.RTOSize = 500
	err := bad.Validate()
	require.ErrorContains(t, err, "-size")
	require.ErrorContains(t, err, "-rto-size")
	require.ErrorContains(t, err, "poll")
	require.ErrorContains(t, err, `"nope"`)
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-quick", "-runs", "2", "-cases", "sync,scan"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, int64(256<<20), cfg.Size, "-quick starts from QuickConfig")
	require.Equal(t, 2, cfg.Runs, "later flags override -quick")
	require.Equal(t, []string{"sync", "scan"}, cfg.Cases)
	require.Equal(t, int64(2<<30), cfg.RTOSize, "the quick RTO disks keep the 1:8 ratio of 2 and 16 GiB")
	cfg, err = parseFlags([]string{"-cases", "materialize,rto", "-rto-size", "4294967296"}, io.Discard)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, int64(4<<30), cfg.RTOSize)
	_, err = parseFlags([]string{"extra"}, io.Discard)
	require.Error(t, err)
}

func TestUnescapeMount(t *testing.T) {
	require.Equal(t, `/a b/c\d`, unescapeMount(`/a\040b/c\134d`))
}

func TestReadGCTrace(t *testing.T) {
	log := filepath.Join(t.TempDir(), "agent-1.log")
	require.NoError(t, os.WriteFile(log, []byte(`gc 1 @0.011s 2%: 0.012+0.40+0.003 ms clock, 0.024+0.11/0.30/0+0.006 ms cpu, 3->3->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P
time=2026-11-26T01:00:00.000Z level=INFO msg="point made"
gc 2 @1.5s 3%: 0.02+1.1+0.01 ms clock, 0.04+0.5/1.0/0+0.02 ms cpu, 40->44->21 MB, 42 MB goal, 0 MB stacks, 0 MB globals, 2 P
gc 3 @2.5s 3%: 0.02+1.1+0.01 ms clock, 0.04+0.5/1.0/0+0.02 ms cpu, 30->31->9 MB, 52 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)
`), 0o644))
	g, err := readGCTrace(log)
	require.NoError(t, err)
	require.Equal(t, gcTrace{GCs: 3, MaxStart: 40, MaxLive: 21, MaxGoalMB: 52}, g)
}

func TestSizeNameAndJobSteps(t *testing.T) {
	require.Equal(t, "16 GiB", sizeName(16<<30))
	require.Equal(t, "256 MiB", sizeName(256<<20))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	j := api.Job{Steps: []api.JobStep{
		{Name: "prerequisites", State: api.StepSucceeded, Started: t0, Ended: t0.Add(50 * time.Millisecond)},
		{Name: "process", State: api.StepSkipped},
		{Name: "move", State: api.StepSucceeded, Started: t0, Ended: t0.Add(1234 * time.Millisecond)},
	}}
	require.Equal(t, "job steps: prerequisites 0.05 s, process skipped, move 1.23 s", jobSteps(j))
}

// TestPlanAnchor: the plan RTO anchor sums each group's slowest single
// failover (groups of consecutive machines).
func TestPlanAnchor(t *testing.T) {
	s := func(ms ...int) []time.Duration {
		var out []time.Duration
		for _, m := range ms {
			out = append(out, time.Duration(m)*time.Millisecond)
		}
		return out
	}
	require.Equal(t, 900*time.Millisecond, planAnchor(s(100, 300, 200, 600), 2))
	require.Equal(t, 1200*time.Millisecond, planAnchor(s(100, 300, 200, 600), 4))
	require.Equal(t, 600*time.Millisecond, planAnchor(s(100, 300, 200, 600), 1))
}
