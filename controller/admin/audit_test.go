package admin

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestRedactBody: secrets at any depth become "[redacted]", other fields
// stay, target fields are collected, and a body that is not JSON is kept
// only as its size.
func TestRedactBody(t *testing.T) {
	body := []byte(`{"machine":"web1","machines":["a","web1"],"key":"LS0tLS1CRUdJTiBQUklWQVRF",
		"options":{"password":"hunter2","uri":"qemu:///system","items":[{"api_token":"t0k"}]},"point":"latest"}`)
	red, names := redactBody(body)
	require.Equal(t, []string{"web1", "a"}, names)
	var got map[string]any
	require.NoError(t, json.Unmarshal(red, &got))
	require.Equal(t, map[string]any{
		"machine": "web1", "machines": []any{"a", "web1"}, "key": redacted, "point": "latest",
		"options": map[string]any{"password": redacted, "uri": "qemu:///system", "items": []any{map[string]any{"api_token": redacted}}},
	}, got)
	for _, secret := range []string{"LS0tLS1", "hunter2", "t0k"} {
		require.NotContains(t, string(red), secret)
	}

	red, names = redactBody([]byte("token=abc"))
	require.JSONEq(t, `{"unparsed_bytes":9}`, string(red))
	require.Empty(t, names)
	red, _ = redactBody(nil)
	require.Nil(t, red)
}

// TestTokenIdentityHidesTheToken: the identity tells tokens apart and
// does not contain the token.
func TestTokenIdentityHidesTheToken(t *testing.T) {
	a, b := TokenIdentity("secret-one"), TokenIdentity("secret-two")
	require.NotEqual(t, a, b)
	require.NotContains(t, a, "secret")
	require.Regexp(t, `^token:sha256:[0-9a-f]{12}$`, a)
}

// auditBackend answers the few calls TestAuditMiddleware makes and keeps
// the entries the server records; any other call panics (the embedded nil
// Backend), which would fail the test.
type auditBackend struct {
	Backend
	entries []api.AuditEntry
}

func (b *auditBackend) RecordAudit(_ context.Context, e api.AuditEntry) error {
	b.entries = append(b.entries, e)
	return nil
}

func (b *auditBackend) Policies(context.Context) ([]api.Policy, error) { return []api.Policy{}, nil }

func (b *auditBackend) Failover(_ context.Context, req api.FailoverRequest) (api.Job, error) {
	return api.Job{ID: "job-42", Kind: "failover", State: api.JobRunning, Steps: []api.JobStep{}}, nil
}

func (b *auditBackend) RemoveTarget(_ context.Context, name string) error {
	return api.Errorf(api.CodeNotFound, "no target %s", name)
}

func (b *auditBackend) ExportManifest(_ context.Context, machine, spec string, key []byte) (api.ExportManifest, error) {
	return api.ExportManifest{}, nil
}

// TestAuditMiddleware: a front end's identity on the request context is
// what is recorded (the console's way in); the token listener records the
// token's fingerprint; reads are not recorded; a started job's id, an
// error's code and message, the targets and the redacted body are.
func TestAuditMiddleware(t *testing.T) {
	b := &auditBackend{}
	call := func(s *Server, ctx context.Context, method, path, body, token string) int {
		r := httptest.NewRequest(method, path, strings.NewReader(body)).WithContext(ctx)
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w.Code
	}
	console := WithIdentity(context.Background(), Identity{Who: TokenIdentity("t0k"), Via: "console"})
	plain := NewServer(b, "", nil)
	require.Equal(t, 200, call(plain, console, "POST", "/v1/failover", `{"machine":"web1","test":true}`, ""))
	require.Equal(t, 404, call(plain, console, "DELETE", "/v1/targets/dr9", "", ""))
	require.Equal(t, 200, call(plain, console, "GET", "/v1/policies", "", ""))
	require.Equal(t, 200, call(plain, context.Background(), "POST", "/v1/machines/web1/export", `{"point":"latest","key":"c2VjcmV0"}`, ""))
	tokened := NewServer(b, "s3cret", nil)
	require.Equal(t, 401, call(tokened, context.Background(), "DELETE", "/v1/targets/dr9", "", "wrong"))
	require.Equal(t, 404, call(tokened, context.Background(), "DELETE", "/v1/targets/dr9", "", "s3cret"))

	require.Len(t, b.entries, 4, "reads and refused tokens are not recorded: %+v", b.entries)
	e := b.entries[0]
	require.Equal(t, Identity{Who: TokenIdentity("t0k"), Via: "console"}, Identity{Who: e.Who, Via: e.Via})
	require.Equal(t, "POST /v1/failover", e.Method+" "+e.Path)
	require.Equal(t, []string{"web1"}, e.Targets)
	require.JSONEq(t, `{"machine":"web1","test":true}`, string(e.Body))
	require.Equal(t, api.AuditOK, e.Result)
	require.Equal(t, "job-42", e.Job)

	e = b.entries[1]
	require.Equal(t, "console", e.Via)
	require.Equal(t, []string{"dr9"}, e.Targets)
	require.Equal(t, api.AuditError, e.Result)
	require.Equal(t, api.CodeNotFound, e.Code)
	require.Equal(t, "no target dr9", e.Message)
	require.Empty(t, e.Job)

	e = b.entries[2]
	require.Equal(t, Identity{Who: "unknown", Via: "unknown"}, Identity{Who: e.Who, Via: e.Via}, "no front end said who")
	require.Equal(t, []string{"web1"}, e.Targets)
	require.JSONEq(t, `{"point":"latest","key":"[redacted]"}`, string(e.Body))
	require.Empty(t, e.Job, "an export's answer is not a job")

	e = b.entries[3]
	require.Equal(t, Identity{Who: TokenIdentity("s3cret"), Via: "tls"}, Identity{Who: e.Who, Via: e.Via})
	require.Equal(t, api.CodeNotFound, e.Code)
}
