package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// recorder is an admin API that keeps each request's path and body and
// answers with a job.
type recorder struct {
	*httptest.Server
	mu  sync.Mutex
	got []struct{ path, body string }
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, struct{ path, body string }{req.URL.Path, string(b)})
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.Job{ID: "job-1", Kind: "x", State: api.JobRunning})
	}))
	t.Cleanup(r.Close)
	return r
}

// take returns the requests so far and forgets them.
func (r *recorder) take() []struct{ path, body string } {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

// TestFailoverDirectionReverseIsUnplannedFailback: `failover --direction
// reverse` sends exactly the request `failback --unplanned` sends (same
// route, same bytes), --point included; forward stays a failover; a
// failover flag a failback lacks is a usage error that sends nothing.
func TestFailoverDirectionReverseIsUnplannedFailback(t *testing.T) {
	r := newRecorder(t)
	run := func(args ...string) (int, string, string) {
		return cli(t, append([]string{"--admin", r.URL}, args...)...)
	}
	for _, tc := range []struct{ reverse, failback []string }{
		{[]string{"failover", "vm", "--direction", "reverse"}, []string{"failback", "vm", "--unplanned"}},
		{[]string{"failover", "vm", "--direction", "reverse", "--point", "7"}, []string{"failback", "vm", "--unplanned", "--point", "7"}},
		{[]string{"failover", "--plan", "p", "--direction", "reverse", "--point", "latest"}, []string{"failback", "--plan", "p", "--unplanned", "--point", "latest"}},
	} {
		code, out, errs := run(tc.reverse...)
		require.Equal(t, 0, code, errs)
		require.Equal(t, "job-1\n", out)
		rev := r.take()
		code, _, errs = run(tc.failback...)
		require.Equal(t, 0, code, errs)
		fb := r.take()
		require.Len(t, rev, 1)
		require.Equal(t, fb, rev, "%v sends what %v sends", tc.reverse, tc.failback)
		require.Equal(t, "/v1/failback", rev[0].path)
		var req api.MachineActionRequest
		require.NoError(t, json.Unmarshal([]byte(rev[0].body), &req))
		require.True(t, req.Unplanned)
	}

	code, _, errs := run("failover", "vm")
	require.Equal(t, 0, code, errs)
	got := r.take()
	require.Len(t, got, 1)
	require.Equal(t, "/v1/failover", got[0].path)
	var fo api.FailoverRequest
	require.NoError(t, json.Unmarshal([]byte(got[0].body), &fo))
	require.Equal(t, api.FailoverRequest{Machine: "vm", Direction: "forward"}, fo)

	for _, args := range [][]string{
		{"failover", "vm", "--direction", "reverse", "--test"},
		{"failover", "vm", "--direction", "reverse", "--planned"},
		{"failover", "vm", "--direction", "reverse", "--dry-run"},
		{"failover", "vm", "--direction", "reverse", "--timeout", "5m"},
		{"failover", "vm", "--direction", "Reverse"},
	} {
		code, _, errs := run(args...)
		require.Equal(t, exitUsage, code, "%v: %s", args, errs)
		require.Contains(t, errs, "--direction", "%v", args)
		require.Empty(t, r.take(), "%v sent nothing", args)
	}
}
