package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
)

// maxBody bounds every request body.
const maxBody = 1 << 20

// Server serves the admin API for a Backend.
type Server struct {
	b     Backend
	log   *slog.Logger
	token string // bearer token required when non-empty (TCP listener)
	mux   *http.ServeMux
}

// NewServer builds the handler. token, when set, is required as
// "Authorization: Bearer TOKEN" on every request.
func NewServer(b Backend, token string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{b: b, log: log, token: token, mux: http.NewServeMux()}
	s.routes()
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.token != "" {
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
			// Not an admin call, so not in the audit trail; the log keeps it.
			s.log.Warn("admin call refused: missing or wrong token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			writeError(w, api.Errorf(api.CodeUnauthorized, "missing or wrong admin token"))
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if readOnly[r.Method] {
		s.mux.ServeHTTP(w, r)
		return
	}
	// A front end that authenticated the caller says who it is; the token
	// listener's caller is whoever holds its token.
	id, ok := IdentityFrom(r.Context())
	if !ok {
		id = Identity{Who: "unknown", Via: "unknown"}
		if s.token != "" {
			id = Identity{Who: TokenIdentity(s.token), Via: "tls"}
		}
	}
	s.audited(w, r, id)
}

// Mount serves h at pattern (a ServeMux pattern) behind the same token
// check and audit as the API: /metrics, the console. Call before serving.
func (s *Server) Mount(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("POST /v1/tokens", jsonIn(s, s.b.CreateToken))
	m.HandleFunc("GET /v1/tokens", noIn(s, s.b.Tokens))
	m.HandleFunc("DELETE /v1/tokens/{id}", pathOnly(s, "id", s.b.RevokeToken))

	m.HandleFunc("GET /v1/agents", noIn(s, s.b.Agents))
	m.HandleFunc("POST /v1/agents/{agent}/revoke", pathOnly(s, "agent", s.b.RevokeAgent))
	m.HandleFunc("DELETE /v1/agents/{agent}", pathOnly(s, "agent", s.b.RemoveAgent))
	m.HandleFunc("POST /v1/agents/upgrade", jsonIn(s, s.b.UpgradeAgents))
	m.HandleFunc("GET /v1/agents/{agent}/inventory", func(w http.ResponseWriter, r *http.Request) {
		items, err := s.b.Inventory(r.Context(), r.PathValue("agent"))
		s.reply(w, items, err)
	})

	m.HandleFunc("GET /v1/policies", noIn(s, s.b.Policies))
	m.HandleFunc("POST /v1/policies", jsonIn(s, s.b.CreatePolicy))
	m.HandleFunc("PATCH /v1/policies/{name}", func(w http.ResponseWriter, r *http.Request) {
		var u api.PolicyUpdate
		if !decode(w, r, &u) {
			return
		}
		p, err := s.b.UpdatePolicy(r.Context(), r.PathValue("name"), u)
		s.reply(w, p, err)
	})
	m.HandleFunc("DELETE /v1/policies/{name}", pathOnly(s, "name", s.b.DeletePolicy))

	m.HandleFunc("GET /v1/plans", noIn(s, s.b.Plans))
	m.HandleFunc("POST /v1/plans", jsonIn(s, s.b.CreatePlan))
	m.HandleFunc("GET /v1/plans/{name}", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.b.Plan(r.Context(), r.PathValue("name"))
		s.reply(w, p, err)
	})
	m.HandleFunc("DELETE /v1/plans/{name}", pathOnly(s, "name", s.b.DeletePlan))
	m.HandleFunc("POST /v1/plans/{name}/edit", func(w http.ResponseWriter, r *http.Request) {
		var e api.PlanEdit
		if !decode(w, r, &e) {
			return
		}
		p, err := s.b.EditPlan(r.Context(), r.PathValue("name"), e)
		s.reply(w, p, err)
	})
	m.HandleFunc("PUT /v1/plans/{name}", func(w http.ResponseWriter, r *http.Request) {
		var p api.Plan
		if !decode(w, r, &p) {
			return
		}
		if p.Name != r.PathValue("name") {
			writeError(w, api.Errorf(api.CodeInvalid, "plan name %q in the body differs from %q in the path", p.Name, r.PathValue("name")))
			return
		}
		res, err := s.b.ApplyPlan(r.Context(), p)
		s.reply(w, res, err)
	})

	m.HandleFunc("POST /v1/machines", jsonIn(s, s.b.Protect))
	m.HandleFunc("GET /v1/machines", noIn(s, s.b.Machines))
	m.HandleFunc("GET /v1/machines/{machine}", func(w http.ResponseWriter, r *http.Request) {
		mc, err := s.b.Machine(r.Context(), r.PathValue("machine"))
		s.reply(w, mc, err)
	})
	m.HandleFunc("DELETE /v1/machines/{machine}", func(w http.ResponseWriter, r *http.Request) {
		err := s.b.Unprotect(r.Context(), r.PathValue("machine"), r.URL.Query().Get("delete_points") == "true")
		s.reply(w, struct{}{}, err)
	})
	m.HandleFunc("PATCH /v1/machines/{machine}", func(w http.ResponseWriter, r *http.Request) {
		var req api.UpdateMachineRequest
		if !decode(w, r, &req) {
			return
		}
		res, err := s.b.UpdateMachine(r.Context(), r.PathValue("machine"), req)
		s.reply(w, res, err)
	})
	m.HandleFunc("GET /v1/machines/{machine}/commit-preview", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.b.CommitPreview(r.Context(), r.PathValue("machine"))
		s.reply(w, p, err)
	})
	m.HandleFunc("GET /v1/machines/{machine}/points", func(w http.ResponseWriter, r *http.Request) {
		ps, err := s.b.Points(r.Context(), r.PathValue("machine"))
		if ps == nil {
			ps = []api.Point{}
		}
		s.reply(w, ps, err)
	})
	m.HandleFunc("POST /v1/machines/{machine}/points/label", func(w http.ResponseWriter, r *http.Request) {
		var req api.LabelRequest
		if !decode(w, r, &req) {
			return
		}
		p, err := s.b.LabelPoint(r.Context(), r.PathValue("machine"), req)
		s.reply(w, p, err)
	})
	m.HandleFunc("POST /v1/machines/{machine}/export", func(w http.ResponseWriter, r *http.Request) {
		var req api.ExportRequest
		if !decode(w, r, &req) {
			return
		}
		man, err := s.b.ExportManifest(r.Context(), r.PathValue("machine"), req.Point, req.Key)
		s.reply(w, man, err)
	})
	m.HandleFunc("POST /v1/machines/{machine}/export/{point}/{disk}", s.exportDisk)

	m.HandleFunc("POST /v1/targets", jsonIn(s, s.b.AddTarget))
	m.HandleFunc("GET /v1/targets", noIn(s, s.b.Targets))
	m.HandleFunc("DELETE /v1/targets/{name}", pathOnly(s, "name", s.b.RemoveTarget))
	m.HandleFunc("POST /v1/failover", jsonIn(s, s.b.Failover))
	m.HandleFunc("POST /v1/commit", jsonIn(s, s.b.Commit))
	m.HandleFunc("POST /v1/change-point", jsonIn(s, s.b.ChangePoint))
	m.HandleFunc("POST /v1/cleanup", jsonIn(s, s.b.Cleanup))
	m.HandleFunc("POST /v1/reprotect", jsonIn(s, s.b.Reprotect))
	m.HandleFunc("POST /v1/failback", jsonIn(s, s.b.Failback))
	m.HandleFunc("POST /v1/revert", jsonIn(s, s.b.Revert))
	m.HandleFunc("GET /v1/jobs", noIn(s, s.b.Jobs))
	m.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		j, err := s.b.Job(r.Context(), r.PathValue("id"))
		s.reply(w, j, err)
	})
	m.HandleFunc("POST /v1/jobs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		j, err := s.b.CancelJob(r.Context(), r.PathValue("id"))
		s.reply(w, j, err)
	})
	m.HandleFunc("POST /v1/jobs/{id}/resume", func(w http.ResponseWriter, r *http.Request) {
		j, err := s.b.ResumeJob(r.Context(), r.PathValue("id"))
		s.reply(w, j, err)
	})
	m.HandleFunc("GET /v1/jobs/{id}/watch", s.watchJob)

	m.HandleFunc("POST /v1/verify", jsonIn(s, func(ctx context.Context, req api.VerifyRequest) (api.VerifyReport, error) {
		return s.b.Verify(ctx, req.Machine)
	}))
	m.HandleFunc("POST /v1/gc", noIn(s, s.b.GC))
	m.HandleFunc("GET /v1/audit", s.auditList)

	m.HandleFunc("POST /v1/alerts", jsonIn(s, s.b.CreateAlert))
	m.HandleFunc("GET /v1/alerts", noIn(s, s.b.Alerts))
	m.HandleFunc("GET /v1/alerts/{name}", func(w http.ResponseWriter, r *http.Request) {
		a, err := s.b.Alert(r.Context(), r.PathValue("name"))
		s.reply(w, a, err)
	})
	m.HandleFunc("DELETE /v1/alerts/{name}", pathOnly(s, "name", s.b.RemoveAlert))
	m.HandleFunc("POST /v1/alerts/{name}/test", func(w http.ResponseWriter, r *http.Request) {
		a, err := s.b.TestAlert(r.Context(), r.PathValue("name"))
		s.reply(w, a, err)
	})
	m.HandleFunc("POST /v1/points/audit", jsonIn(s, s.b.AuditPoints))

	m.HandleFunc("POST /v1/drills", jsonIn(s, s.b.CreateDrill))
	m.HandleFunc("GET /v1/drills", noIn(s, s.b.Drills))
	m.HandleFunc("GET /v1/drills/{name}", func(w http.ResponseWriter, r *http.Request) {
		d, err := s.b.Drill(r.Context(), r.PathValue("name"))
		s.reply(w, d, err)
	})
	m.HandleFunc("POST /v1/drills/{name}/run", func(w http.ResponseWriter, r *http.Request) {
		run, err := s.b.RunDrill(r.Context(), r.PathValue("name"))
		s.reply(w, run, err)
	})
	m.HandleFunc("DELETE /v1/drills/{name}", pathOnly(s, "name", s.b.DeleteDrill))
}

func (s *Server) exportDisk(w http.ResponseWriter, r *http.Request) {
	var req api.ExportRequest
	if !decode(w, r, &req) {
		return
	}
	var point int64
	if _, err := fmt.Sscan(r.PathValue("point"), &point); err != nil {
		writeError(w, api.Errorf(api.CodeInvalid, "point id %q is not a number", r.PathValue("point")))
		return
	}
	// The stream's first write commits the 200 status; an error after that
	// is signalled by the stream's missing end record (the client checks it).
	w.Header().Set("Content-Type", SparseContentType)
	fw := &flushWriter{w: w}
	err := s.b.ExportDisk(r.Context(), r.PathValue("machine"), point, r.PathValue("disk"), req.Key, fw)
	if err != nil {
		s.log.Warn("export failed", "machine", r.PathValue("machine"), "err", err)
		if !fw.written {
			s.writeError(w, err)
		}
	}
}

// flushWriter flushes each write so a long export streams.
type flushWriter struct {
	w       http.ResponseWriter
	written bool
}

func (l *flushWriter) Write(p []byte) (int, error) {
	l.written = true
	n, err := l.w.Write(p)
	if f, ok := l.w.(http.Flusher); ok {
		f.Flush()
	}
	return n, err
}

func jsonIn[Req, Resp any](s *Server, fn func(context.Context, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decode(w, r, &req) {
			return
		}
		resp, err := fn(r.Context(), req)
		s.reply(w, resp, err)
	}
}

func noIn[Resp any](s *Server, fn func(context.Context) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		resp, err := fn(r.Context())
		s.reply(w, resp, err)
	}
}

func pathOnly(s *Server, name string, fn func(context.Context, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.reply(w, struct{}{}, fn(r.Context(), r.PathValue(name)))
	}
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength == 0 {
		return true
	}
	if err := json.NewDecoder(r.Body).Decode(v); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, api.Errorf(api.CodeInvalid, "malformed request body: %v", err))
		return false
	}
	return true
}

// reply sends v, or the backend's error as the API error it maps to.
func (s *Server) reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

var statusOf = map[string]int{
	api.CodeInvalid:            http.StatusBadRequest,
	api.CodeNotFound:           http.StatusNotFound,
	api.CodeUnauthorized:       http.StatusUnauthorized,
	api.CodeConflict:           http.StatusConflict,
	api.CodeExists:             http.StatusConflict,
	api.CodeUnavailable:        http.StatusServiceUnavailable,
	api.CodeFailedPrecondition: http.StatusPreconditionFailed,
	api.CodeBusy:               http.StatusConflict,
	api.CodeInternal:           http.StatusInternalServerError,
}

// ErrorMapper is implemented by a Backend that maps its own errors to
// *api.Error at this boundary (one mapper for every handler); errors it
// leaves unmapped are internal.
type ErrorMapper interface {
	APIError(err error) error
}

// writeError maps a backend error, then sends it.
func (s *Server) writeError(w http.ResponseWriter, err error) {
	if m, ok := s.b.(ErrorMapper); ok {
		err = m.APIError(err)
	}
	writeError(w, err)
}

// writeError sends {code, message}. Errors that are not *api.Error are
// internal: their text is still shown, since the admin is the operator.
func writeError(w http.ResponseWriter, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	status, ok := statusOf[ae.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(ae)
}

// watchJob streams the job as NDJSON, one object per change, until it ends.
func (s *Server) watchJob(w http.ResponseWriter, r *http.Request) {
	ch, err := s.b.WatchJob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for j := range ch {
		if err := enc.Encode(j); err != nil {
			return
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
}
