package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
)

// TestAuditListSurvivesRestart: mutating calls over the admin socket and
// over the TLS listener with the token — a policy created, a token minted,
// a target removal refused, a failover job started — are listed by `audit
// list --json` after the controller restarts, each with who made it (the
// socket peer's uid, the token's fingerprint), the names it acted on and
// its result; read-only calls are not listed and no secret is recorded.
func TestAuditListSurvivesRestart(t *testing.T) {
	s, _ := protectedMachine(t, "web1")
	code, _, stderr := s.cli(t, "policies", "update", "p", "--rpo-threshold", "2m")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr := s.cli(t, "--json", "tokens", "create")
	require.Equal(t, exitOK, code, stderr)
	var tok api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok))
	require.NotEmpty(t, tok.Token)
	code, _, _ = s.cli(t, "targets", "remove", "nowhere", "--force")
	require.Equal(t, exitError, code)
	code, stdout, stderr = s.cli(t, "failover", "web1")
	require.Equal(t, exitOK, code, stderr)
	job := strings.TrimSpace(stdout)
	require.NotEmpty(t, job)
	code, _, stderr = s.cli(t, "machines", "list") // read-only: not audited
	require.Equal(t, exitOK, code, stderr)

	// Restart with the TLS admin listener too; one call through it.
	data := s.data
	s.stop() // a second controller on the same data needs the first gone
	s2, _ := serveData(t, data, "--admin-listen", "127.0.0.1:0")
	require.True(t, strings.HasPrefix(s2.admin, "https://"), s2.admin)
	token, err := os.ReadFile(filepath.Join(data, "admin.token"))
	require.NoError(t, err)
	tlsArgs := []string{"--admin", s2.admin, "--admin-token", strings.TrimSpace(string(token)), "--admin-ca", filepath.Join(data, "pki", "ca.crt")}
	code, _, stderr = cli(t, append(tlsArgs, "policies", "create", "q", "--rp-every", "30s")...)
	require.Equal(t, exitOK, code, stderr)
	code, _, _ = cli(t, append(tlsArgs[:2:2], "--admin-token", "wrong", "--admin-ca", tlsArgs[5], "policies", "delete", "q")...)
	require.Equal(t, exitError, code, "a wrong token is refused")

	code, stdout, stderr = cli(t, append(tlsArgs, "--json", "audit", "list")...)
	require.Equal(t, exitOK, code, stderr)
	require.NotContains(t, stdout, tok.Token, "a minted token's secret is in the audit trail")
	require.NotContains(t, stdout, strings.TrimSpace(string(token)), "the admin token is in the audit trail")
	var es []api.AuditEntry
	require.NoError(t, json.Unmarshal([]byte(stdout), &es))
	byCall := map[string]api.AuditEntry{}
	for _, e := range es {
		require.NotEqual(t, "GET", e.Method, "a read-only call was audited: %+v", e)
		if _, seen := byCall[e.Method+" "+e.Path]; !seen { // the first of each
			byCall[e.Method+" "+e.Path] = e
		}
	}
	uid := "uid:" + strconv.Itoa(os.Getuid())
	want := []struct {
		call, who, via, result, code string
		targets                      []string
	}{
		{"POST /v1/policies", uid, "socket", api.AuditOK, "", []string{"p"}},
		{"PATCH /v1/policies/p", uid, "socket", api.AuditOK, "", []string{"p"}},
		{"POST /v1/tokens", uid, "socket", api.AuditOK, "", nil},
		{"DELETE /v1/targets/nowhere", uid, "socket", api.AuditError, api.CodeNotFound, []string{"nowhere"}},
		{"POST /v1/machines", uid, "socket", api.AuditOK, "", []string{"web1", "host1"}},
		{"POST /v1/failover", uid, "socket", api.AuditOK, "", []string{"web1"}},
		{"POST /v1/policies#tls", admin.TokenIdentity(strings.TrimSpace(string(token))), "tls", api.AuditOK, "", []string{"q"}},
	}
	for _, w := range want {
		call := strings.TrimSuffix(w.call, "#tls")
		e, ok := byCall[call]
		if strings.HasSuffix(w.call, "#tls") {
			e, ok = es[len(es)-1], es[len(es)-1].Via == "tls"
		}
		require.True(t, ok, "no audit entry for %s in %s", w.call, stdout)
		require.Equal(t, w.who, e.Who, w.call)
		require.Equal(t, w.via, e.Via, w.call)
		require.Equal(t, w.result, e.Result, w.call)
		require.Equal(t, w.code, e.Code, w.call)
		if w.targets != nil {
			require.ElementsMatch(t, w.targets, e.Targets, w.call)
		}
		require.WithinDuration(t, time.Now(), e.Time, 5*time.Minute, w.call)
	}
	require.Equal(t, job, byCall["POST /v1/failover"].Job, "the failover entry names the job it started")
	require.Contains(t, byCall["DELETE /v1/targets/nowhere"].Message, "nowhere")
	for _, e := range es {
		require.NotEqual(t, "DELETE /v1/policies/q", e.Method+" "+e.Path, "a call refused for its token is not an admin call")
	}

	code, stdout, stderr = cli(t, append(tlsArgs, "audit", "list", "--limit", "1")...)
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "POST /v1/policies")
	require.Contains(t, stdout, "tls")
	require.Len(t, strings.Split(strings.TrimSpace(stdout), "\n"), 2, "header and one entry: %s", stdout)
}
