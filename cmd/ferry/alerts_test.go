package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// hook is a webhook receiver that keeps every request and answers the
// first failFirst of them (or all, failFirst < 0) with failStatus.
type hook struct {
	*httptest.Server
	mu         sync.Mutex
	got        []api.AlertPayload // every attempt, in arrival order
	accepted   []api.AlertPayload // the attempts answered 2xx
	failFirst  int
	failStatus int
}

func newHook(t *testing.T, failFirst, failStatus int) *hook {
	h := &hook{failFirst: failFirst, failStatus: failStatus}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p api.AlertPayload
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&p) != nil {
			t.Errorf("webhook got a malformed request: %s %s", r.Method, r.Header.Get("Content-Type"))
		}
		if r.Header.Get("X-Ferry-Delivery") != p.Delivery || r.Header.Get("X-Ferry-Event") != p.Event {
			t.Errorf("headers disagree with the payload: %v vs %+v", r.Header, p)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.got = append(h.got, p)
		if h.failFirst < 0 || len(h.got) <= h.failFirst {
			http.Error(w, "receiver down", h.failStatus)
			return
		}
		h.accepted = append(h.accepted, p)
	}))
	t.Cleanup(h.Close)
	return h
}

// count is the accepted deliveries of event with status.
func (h *hook) count(event, status string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, p := range h.accepted {
		if p.Event == event && p.Status == status {
			n++
		}
	}
	return n
}

// dump lists what arrived, for failure messages.
func (h *hook) dump() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, p := range h.got {
		b.WriteString(p.Time.Format(time.RFC3339Nano) + " " + p.Event + " " + p.Status + " " + p.Detail + "\n")
	}
	return b.String()
}

func (h *hook) find(event, status string) api.AlertPayload {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.accepted {
		if p.Event == event && p.Status == status {
			return p
		}
	}
	return api.AlertPayload{}
}

func (o *observed) alerts(t *testing.T) map[string]api.Alert {
	t.Helper()
	code, stdout, stderr := o.cli(t, "--json", "alerts", "list")
	require.Equal(t, exitOK, code, stderr)
	var as []api.Alert
	require.NoError(t, json.Unmarshal([]byte(stdout), &as))
	out := map[string]api.Alert{}
	for _, a := range as {
		out[a.Name] = a
	}
	return out
}

// TestAlertRPOBreachFiresOnceAndResolvesOnce: web1 replicates every second
// under an 8 s RPO threshold. With its agent stopped, the machine turns
// critical and the rpo-breach webhook is delivered once, however many
// evaluations follow; once the agent is back and a point lands, one
// resolution follows. A webhook that refuses its first two attempts gets
// the same notification retried (same delivery id) and accepts it; the
// failures show in `alerts list`. `alerts test` reports a dead webhook.
// The stopped agent is also agent-lost past --agent-lost-after, once,
// resolved once it reconnects; a failed job is job-failed.
func TestAlertRPOBreachFiresOnceAndResolvesOnce(t *testing.T) {
	// 8 s: slack for a loaded machine, no breach while replicating.
	o := observedController(t, "1s", "8s", "--agent-lost-after", "3s")
	oncall, flaky, dead := newHook(t, 0, 0), newHook(t, 2, http.StatusInternalServerError), newHook(t, -1, http.StatusServiceUnavailable)
	for _, args := range [][]string{
		{"alerts", "add", "oncall", "--webhook", oncall.URL, "--on", "rpo-breach,agent-lost"},
		{"alerts", "add", "flaky", "--webhook", flaky.URL, "--on", "rpo-breach,job-failed"},
		{"alerts", "add", "dead", "--webhook", dead.URL},
	} {
		code, _, stderr := o.cli(t, args...)
		require.Equal(t, exitOK, code, "%v: %s", args, stderr)
	}
	code, _, stderr := o.cli(t, "alerts", "add", "bad", "--webhook", oncall.URL, "--on", "rpo-breach,coffee-low")
	require.Equal(t, exitUsage, code, "an unknown event is refused: %s", stderr)
	code, _, stderr = o.cli(t, "--json", "alerts", "add", "bad", "--webhook", "ftp://example.com/x")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeInvalid, jsonError(t, stderr).Code)
	require.Equal(t, api.AlertEvents, o.alerts(t)["dead"].On, "no --on: every event")

	code, stdout, stderr := o.cli(t, "alerts", "test", "oncall")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "delivered")
	require.Equal(t, 1, oncall.count(api.EventTest, api.AlertFiring))
	code, _, stderr = o.cli(t, "alerts", "test", "dead")
	require.Equal(t, exitError, code)
	require.Contains(t, stderr, "HTTP 503")

	// Replicating: no incident.
	time.Sleep(3 * time.Second)
	require.Equal(t, 0, oncall.count(api.EventRPOBreach, api.AlertFiring), "an incident while replicating within the threshold: %s", oncall.dump())
	require.Equal(t, 0, oncall.count(api.EventAgentLost, api.AlertFiring), "agent-lost while connected")

	o.agent.stop(t)
	require.Eventually(t, func() bool { return oncall.count(api.EventRPOBreach, api.AlertFiring) == 1 },
		30*time.Second, 100*time.Millisecond, "no rpo-breach notification after the agent stopped")
	m := o.machine(t)
	require.Equal(t, "critical", m.Health, "the machine past its threshold is critical: %s", m.HealthReason)
	firing := oncall.find(api.EventRPOBreach, api.AlertFiring)
	require.Equal(t, "oncall", firing.Alert)
	require.Equal(t, "web1", firing.Subject)
	require.Equal(t, "rpo-breach/web1", firing.Incident)
	require.Contains(t, firing.Detail, "exceeds the threshold 8s")
	require.Equal(t, 1, firing.Version)
	lost := oncall.find(api.EventAgentLost, api.AlertFiring)
	require.Equal(t, "agent-lost/host1", lost.Incident, "the agent away past --agent-lost-after: %s", oncall.dump())
	require.Equal(t, "host1", lost.Subject)
	require.True(t, lost.Started.Before(firing.Started), "3 s away comes before an 8 s RPO")
	time.Sleep(5 * time.Second) // two more evaluations at least
	require.Equal(t, 1, oncall.count(api.EventRPOBreach, api.AlertFiring), "the incident fired again")
	require.Equal(t, 1, oncall.count(api.EventAgentLost, api.AlertFiring), "agent-lost fired again")
	require.Equal(t, 0, oncall.count(api.EventRPOBreach, api.AlertResolved), "resolved while still breached")

	o.agent.start(t)
	require.Eventually(t, func() bool { return oncall.count(api.EventRPOBreach, api.AlertResolved) == 1 },
		time.Minute, 100*time.Millisecond, "no resolution after replication resumed")
	resolved := oncall.find(api.EventRPOBreach, api.AlertResolved)
	require.Equal(t, firing.Incident, resolved.Incident)
	require.True(t, firing.Started.Equal(resolved.Started), "a resolution names when its incident opened")
	require.NotEqual(t, firing.Delivery, resolved.Delivery)
	require.NotEqual(t, "critical", o.machine(t).Health)
	require.Eventually(t, func() bool { return oncall.count(api.EventAgentLost, api.AlertResolved) == 1 },
		10*time.Second, 100*time.Millisecond, "agent-lost not resolved once the agent is back")

	// The flaky webhook: two refusals, then the same notification accepted.
	require.Eventually(t, func() bool {
		return flaky.count(api.EventRPOBreach, api.AlertFiring) == 1 && flaky.count(api.EventRPOBreach, api.AlertResolved) == 1
	}, time.Minute, 100*time.Millisecond, "the flaky webhook never got both notifications")
	flaky.mu.Lock()
	require.GreaterOrEqual(t, len(flaky.got), 4)
	require.Equal(t, flaky.got[0].Delivery, flaky.got[1].Delivery, "a retry is the same delivery")
	require.Equal(t, flaky.got[0].Delivery, flaky.got[2].Delivery)
	require.Equal(t, api.AlertFiring, flaky.got[2].Status, "the firing is delivered before its resolution")
	flaky.mu.Unlock()

	time.Sleep(3 * time.Second)
	as := o.alerts(t)
	require.Equal(t, 1, oncall.count(api.EventRPOBreach, api.AlertFiring), "fired twice: %s", oncall.dump())
	require.Equal(t, 1, oncall.count(api.EventRPOBreach, api.AlertResolved), "resolved twice: %s", oncall.dump())
	require.Equal(t, 1, oncall.count(api.EventAgentLost, api.AlertResolved), "agent-lost resolved twice")
	require.Equal(t, int64(5), as["oncall"].Status.Sent, "test; rpo-breach and agent-lost, each fired and resolved")
	require.Equal(t, int64(0), as["oncall"].Status.FailedAttempts)
	require.Equal(t, int64(2), as["flaky"].Status.Sent)
	require.Equal(t, int64(2), as["flaky"].Status.FailedAttempts, "the failures are visible")
	require.Contains(t, as["flaky"].Status.LastError, "HTTP 500")
	require.Equal(t, 0, as["flaky"].Status.Pending)
	// dead has every event: its test and its retried rpo-breach failed.
	require.GreaterOrEqual(t, as["dead"].Status.FailedAttempts, int64(3))
	require.Equal(t, int64(0), as["dead"].Status.Sent)
	require.Contains(t, as["dead"].Status.LastError, "HTTP 503")
	require.Positive(t, as["dead"].Status.Pending, "its notifications are still retrying")

	code, stdout, stderr = o.cli(t, "alerts", "list")
	require.Equal(t, exitOK, code, stderr)
	require.Regexp(t, `(?m)^flaky\s+rpo-breach,job-failed\s+\S+\s+2\s+2\s+0\s+0\s+webhook answered HTTP 500`, stdout)
	code, stdout, stderr = o.cli(t, "alerts", "show", "flaky")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "failed attempts: 2")

	// A failed job: job-failed, to the rule that has it only.
	code, stdout, stderr = o.cli(t, "failover", "web1")
	require.Equal(t, exitOK, code, stderr)
	jobID := strings.TrimSpace(stdout)
	require.Eventually(t, func() bool { return flaky.count(api.EventJobFailed, api.AlertFiring) == 1 },
		30*time.Second, 100*time.Millisecond, "no job-failed notification: %s", flaky.dump())
	jf := flaky.find(api.EventJobFailed, api.AlertFiring)
	require.Equal(t, jobID, jf.Subject)
	require.Equal(t, "job-failed/"+jobID, jf.Incident)
	require.Contains(t, jf.Summary, "web1")
	require.Contains(t, jf.Detail, "has no target")
	require.Equal(t, 0, oncall.count(api.EventJobFailed, api.AlertFiring), "a rule without job-failed got it")

	code, _, stderr = o.cli(t, "alerts", "remove", "dead")
	require.Equal(t, exitOK, code, stderr)
	code, _, _ = o.cli(t, "alerts", "show", "dead")
	require.Equal(t, exitError, code)
	require.NotContains(t, strings.Join(keys(o.alerts(t)), ","), "dead")
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestAlertDiskLow: with a reserve over half the free space of the data
// directory's filesystem (so under twice the reserve is free, but ingest
// is not paused), disk-low opens as the controller starts; a rule added
// after that is still sent it, once, with the free space and the reserve;
// a controller restart neither fires it again nor resolves it.
func TestAlertDiskLow(t *testing.T) {
	data := t.TempDir()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(data, &st))
	free := int64(st.Bavail) * st.Bsize
	reserve := free * 6 / 10
	s, _ := serveData(t, data, "--reserve", strconv.FormatInt(reserve, 10))
	h := newHook(t, 0, 0)
	code, _, stderr := s.cli(t, "alerts", "add", "disk", "--webhook", h.URL, "--on", "disk-low")
	require.Equal(t, exitOK, code, stderr)
	require.Eventually(t, func() bool { return h.count(api.EventDiskLow, api.AlertFiring) == 1 },
		15*time.Second, 100*time.Millisecond, "no disk-low notification")
	p := h.find(api.EventDiskLow, api.AlertFiring)
	require.Equal(t, "disk-low/controller", p.Incident)
	require.Equal(t, "controller", p.Subject)
	require.Contains(t, p.Detail, "reserve "+api.FormatSize(reserve))
	time.Sleep(5 * time.Second)
	require.Equal(t, 1, h.count(api.EventDiskLow, api.AlertFiring), "disk-low fired again: %s", h.dump())

	// A restart finds the incident open in the catalog: no second firing.
	s.stop()
	s, _ = serveData(t, data, "--reserve", strconv.FormatInt(reserve, 10))
	code, _, stderr = s.cli(t, "alerts", "list")
	require.Equal(t, exitOK, code, stderr)
	time.Sleep(5 * time.Second)
	require.Equal(t, 1, h.count(api.EventDiskLow, api.AlertFiring), "disk-low fired again after a restart: %s", h.dump())
	require.Equal(t, 0, h.count(api.EventDiskLow, api.AlertResolved), "resolved by a restart: %s", h.dump())
}
