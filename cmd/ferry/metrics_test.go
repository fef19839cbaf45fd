package main

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// parseMetrics parses a scrape in the text format.
func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return fams
}

// sample returns the value of the family's series with exactly these
// labels (a histogram's sample count), failing when it is absent.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	require.True(t, ok, "no metric %s", name)
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// TestMetricsDuringReplication: /metrics on the TLS admin listener refuses
// a missing or wrong token; scraped while web1 replicates every second it
// passes `promtool check metrics`, its RPO gauge is within one cycle of
// `machines list --json`, its health series names the same level, and the
// counters of cycles, bytes, agents and a failed job have moved.
func TestMetricsDuringReplication(t *testing.T) {
	o := observedController(t, "1s", "1m")
	require.Eventually(t, func() bool {
		code, stdout, _ := o.cli(t, "--json", "points", "list", "web1")
		var pts []api.Point
		return code == exitOK && json.Unmarshal([]byte(stdout), &pts) == nil && len(pts) >= 3
	}, time.Minute, 100*time.Millisecond, "web1 does not replicate every second")

	for _, tok := range []string{"", "wrong-token"} {
		code, body := o.scrape(t, tok)
		require.Equal(t, 401, code, "token %q: %s", tok, body)
		require.NotContains(t, body, "ferry_machine", "a refused scrape shows metrics")
	}

	// A failover without a target fails: a job outcome to count.
	code, stdout, stderr := o.cli(t, "failover", "web1")
	require.Equal(t, exitOK, code, stderr)
	jobID := strings.TrimSpace(stdout)
	code, _, _ = o.cli(t, "jobs", "watch", jobID)
	require.Equal(t, exitJobFailed, code)
	code, stdout, stderr = o.cli(t, "--json", "jobs", "show", jobID)
	require.Equal(t, exitOK, code, stderr)
	var job api.Job
	require.NoError(t, json.Unmarshal([]byte(stdout), &job))

	t0 := time.Now()
	before := o.machine(t)
	code, body := o.scrape(t, o.token)
	after := o.machine(t)
	elapsed := time.Since(t0).Seconds()
	require.Equal(t, 200, code, body)
	fams := parseMetrics(t, body)
	web1 := map[string]string{"machine": "web1"}
	rpo := sample(t, fams, "ferry_machine_rpo_seconds", web1)
	// The scrape ran between the two lists and names the newest point of
	// one of them (a point may land in between): its RPO is that list's,
	// give or take the time the three calls took, and within one cycle
	// (1 s) of it.
	last := sample(t, fams, "ferry_machine_last_point_timestamp_seconds", web1)
	ref := before
	if math.Abs(last-float64(before.LastPoint.UnixNano())/1e9) > 0.001 {
		ref = after
	}
	require.InDelta(t, float64(ref.LastPoint.UnixNano())/1e9, last, 0.001, "the scrape's newest point is neither list's: %v, %v", before.LastPoint, after.LastPoint)
	require.InDelta(t, *ref.RPOSeconds, rpo, elapsed+0.1, "metrics RPO %.3f, machines list %.3f (calls took %.3f s)", rpo, *ref.RPOSeconds, elapsed)
	require.InDelta(t, *ref.RPOSeconds, rpo, 1.0, "metrics RPO %.3f is more than a cycle from machines list %.3f", rpo, *ref.RPOSeconds)
	t.Logf("RPO: metrics %.3f s, machines list %.3f s; scrape %d bytes; the three calls took %.3f s", rpo, *ref.RPOSeconds, len(body), elapsed)
	require.Equal(t, 60.0, sample(t, fams, "ferry_machine_rpo_threshold_seconds", web1))
	require.Equal(t, before.Health, after.Health)
	for _, h := range healthLevelsForTest {
		want := 0.0
		if h == after.Health {
			want = 1
		}
		require.Equal(t, want, sample(t, fams, "ferry_machine_health", map[string]string{"machine": "web1", "health": h}), h)
	}
	require.GreaterOrEqual(t, sample(t, fams, "ferry_machine_cycle_duration_seconds", web1), 2.0, "cycles observed")
	shipped := sample(t, fams, "ferry_machine_shipped_bytes_total", web1)
	require.Greater(t, shipped, 0.0)
	require.GreaterOrEqual(t, sample(t, fams, "ferry_ingest_bytes_total", nil), shipped)
	require.Greater(t, sample(t, fams, "ferry_machine_stored_bytes_total", web1), 0.0)
	require.Greater(t, sample(t, fams, "ferry_repository_size_bytes", nil), 0.0)
	require.GreaterOrEqual(t, sample(t, fams, "ferry_repository_points", nil), 3.0)
	require.Greater(t, sample(t, fams, "ferry_data_free_bytes", nil), 0.0)
	require.Equal(t, 1.0, sample(t, fams, "ferry_agent_connected", map[string]string{"agent": "host1"}))
	code, stdout, stderr = o.cli(t, "--json", "agents", "list")
	require.Equal(t, exitOK, code, stderr)
	var as []api.Agent
	require.NoError(t, json.Unmarshal([]byte(stdout), &as))
	require.Equal(t, 1.0, sample(t, fams, "ferry_agent_info", map[string]string{"agent": "host1", "version": as[0].Version, "platform": as[0].Platform}))
	outcome := map[string]string{"kind": job.Kind, "outcome": api.JobFailed}
	require.Equal(t, 1.0, sample(t, fams, "ferry_jobs_finished_total", outcome))
	require.Equal(t, 1.0, sample(t, fams, "ferry_job_duration_seconds", outcome))
	require.NotContains(t, body, o.token)

	t.Run("promtool", func(t *testing.T) {
		promtool := needPromtool(t)
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool check metrics: %s", out)
		require.Empty(t, strings.TrimSpace(string(out)), "promtool lint findings")
	})
}

var healthLevelsForTest = []string{"healthy", "warning", "degraded", "critical"}

// needPromtool returns promtool's path, or skips (fails under FERRY_CI).
func needPromtool(t *testing.T) string {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("FERRY_CI") != "" {
			t.Fatal("promtool is missing under FERRY_CI (Debian package prometheus, scripts/test-deps.sh)")
		}
		t.Skip("promtool not installed (Debian package prometheus; scripts/test-deps.sh installs it)")
	}
	return promtool
}

// TestDocsAlertRulesCheck: the example alert rules of
// docs/observability.md pass `promtool check rules`, and name only
// metrics the controller exports.
func TestDocsAlertRulesCheck(t *testing.T) {
	promtool := needPromtool(t)
	doc, err := os.ReadFile("../../docs/observability.md")
	require.NoError(t, err)
	text := string(doc)
	start := strings.Index(text, "groups:\n")
	require.Positive(t, start, "no rule group in docs/observability.md")
	end := strings.Index(text[start:], "```")
	require.Positive(t, end)
	rules := text[start : start+end]
	file := filepath.Join(t.TempDir(), "rules.yml")
	require.NoError(t, os.WriteFile(file, []byte(rules), 0o600))
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	require.NoError(t, err, "promtool check rules: %s", out)
	require.Contains(t, string(out), "SUCCESS")
	for _, name := range regexp.MustCompile(`ferry_[a-z_]+`).FindAllString(rules, -1) {
		name = strings.TrimSuffix(name, "_bucket")
		require.Contains(t, text[:start], "`"+name+"`", "the rules use %s, which the metrics table does not list", name)
	}
}
