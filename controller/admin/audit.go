package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// Alerts is what the alert routes need.
type Alerts interface {
	CreateAlert(ctx context.Context, r api.AlertRule) (api.Alert, error)
	Alerts(ctx context.Context) ([]api.Alert, error)
	Alert(ctx context.Context, name string) (api.Alert, error)
	RemoveAlert(ctx context.Context, name string) error
	TestAlert(ctx context.Context, name string) (api.Alert, error)
}

// Audit is what the audit routes and the audit middleware need.
type Audit interface {
	// RecordAudit appends one entry (its ID and, when zero, its time are
	// the backend's).
	RecordAudit(ctx context.Context, e api.AuditEntry) error
	AuditLog(ctx context.Context, limit int) ([]api.AuditEntry, error)
}

// redacted replaces every secret in a recorded request body.
const redacted = "[redacted]"

// secretKey matches the JSON field names whose values are never recorded:
// tokens, keys (an export's private key), passwords, secrets.
// A webhook URL often embeds its own credential (chat services' do).
var secretKey = regexp.MustCompile(`(?i)token|secret|key|passw|private|credential|webhook`)

// targetFields are the body fields that name what a call acts on.
var targetFields = []string{"machine", "machines", "target", "agent", "agents", "name", "plan"}

// readOnly methods are not audited.
var readOnly = map[string]bool{http.MethodGet: true, http.MethodHead: true, http.MethodOptions: true}

// maxRecorded bounds the response bytes kept to read a job ID or an error.
const maxRecorded = 64 << 10

// audited serves a mutating call through the mux and records it: who
// (the identity the front end set), what (method, path, targets, the
// body minus secrets), when, and the result with the job it started.
func (s *Server) audited(w http.ResponseWriter, r *http.Request, id Identity) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		// Too large or cut off: the handler would refuse it; record that.
		writeError(w, api.Errorf(api.CodeInvalid, "reading request body: %v", err))
		s.record(r, id, nil, http.StatusBadRequest, nil, err)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	s.record(r, id, body, rec.status, rec.buf.Bytes(), nil)
}

func (s *Server) record(r *http.Request, id Identity, body []byte, status int, resp []byte, readErr error) {
	e := api.AuditEntry{
		Who: id.Who, Via: id.Via, Method: r.Method, Path: r.URL.Path,
		Targets: pathTargets(r), Result: api.AuditOK,
	}
	red, names := redactBody(body)
	e.Body = red
	e.Targets = appendNew(e.Targets, names...)
	switch {
	case readErr != nil:
		e.Result, e.Code, e.Message = api.AuditError, api.CodeInvalid, readErr.Error()
	case status/100 != 2:
		e.Result = api.AuditError
		var ae api.Error
		if json.Unmarshal(resp, &ae) == nil && ae.Code != "" {
			e.Code, e.Message = ae.Code, ae.Message
		} else {
			e.Code, e.Message = "http_"+strconv.Itoa(status), http.StatusText(status)
		}
	default:
		var job struct {
			ID    string            `json:"id"`
			Steps []json.RawMessage `json:"steps"`
		}
		// Only a job has steps; a streamed export does not decode at all.
		if json.Unmarshal(resp, &job) == nil && job.ID != "" && job.Steps != nil {
			e.Job = job.ID
		}
	}
	// The call is done whatever happens to its context; the entry is
	// written anyway.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	if err := s.b.RecordAudit(ctx, e); err != nil {
		s.log.Error("audit entry not recorded", "who", e.Who, "method", e.Method, "path", e.Path, "result", e.Result, "err", err)
	}
}

// pathTargets returns the values of the matched route's wildcards.
func pathTargets(r *http.Request) []string {
	var out []string
	for _, seg := range strings.Split(r.Pattern, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			if v := r.PathValue(strings.Trim(seg, "{}")); v != "" {
				out = appendNew(out, v)
			}
		}
	}
	return out
}

// redactBody returns the body as JSON with secrets replaced, and the
// names its target fields carry. A body that is not JSON is not kept (it
// could hold anything): only its size is.
func redactBody(body []byte) (json.RawMessage, []string) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		b, _ := json.Marshal(map[string]int{"unparsed_bytes": len(body)})
		return b, nil
	}
	var names []string
	if m, ok := v.(map[string]any); ok {
		for _, f := range targetFields {
			switch t := m[f].(type) {
			case string:
				if t != "" {
					names = appendNew(names, t)
				}
			case []any:
				for _, x := range t {
					if s, ok := x.(string); ok && s != "" {
						names = appendNew(names, s)
					}
				}
			}
		}
	}
	b, _ := json.Marshal(redact(v))
	return b, names
}

func redact(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if secretKey.MatchString(k) {
				t[k] = redacted
			} else {
				t[k] = redact(x)
			}
		}
	case []any:
		for i := range t {
			t[i] = redact(t[i])
		}
	}
	return v
}

func appendNew(list []string, vs ...string) []string {
next:
	for _, v := range vs {
		for _, have := range list {
			if have == v {
				continue next
			}
		}
		list = append(list, v)
	}
	return list
}

// recorder keeps the status and the start of the response for the audit
// entry; it still streams (Flush) for exports.
type recorder struct {
	http.ResponseWriter
	status int
	wrote  bool
	buf    bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	if room := maxRecorded - r.buf.Len(); room > 0 {
		r.buf.Write(p[:min(room, len(p))])
	}
	return r.ResponseWriter.Write(p)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// auditList serves GET /v1/audit?limit=N.
func (s *Server) auditList(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, api.Errorf(api.CodeInvalid, "limit %q is not a non-negative number", v))
			return
		}
		limit = n
	}
	es, err := s.b.AuditLog(r.Context(), limit)
	if es == nil {
		es = []api.AuditEntry{}
	}
	s.reply(w, es, err)
}
