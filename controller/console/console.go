package console

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// Prefix is where the console is mounted on the admin listener.
const Prefix = "/ui/"

// Backend is what the pages read. The controller's Server implements it
// (the same methods the admin API serves).
type Backend interface {
	Machines(ctx context.Context) ([]api.Machine, error)
	Machine(ctx context.Context, machine string) (api.Machine, error)
	Points(ctx context.Context, machine string) ([]api.Point, error)
	Jobs(ctx context.Context) ([]api.Job, error)
	Job(ctx context.Context, id string) (api.Job, error)
	WatchJob(ctx context.Context, id string) (<-chan api.Job, error)
	Targets(ctx context.Context) ([]api.Target, error)
	Agents(ctx context.Context) ([]api.Agent, error)
	Policies(ctx context.Context) ([]api.Policy, error)
}

// Plans is implemented by a backend that serves recovery plans; the plans
// page lists them when it does and says they are not available otherwise.
type Plans interface {
	Plans(ctx context.Context) ([]api.Plan, error)
}

// Config wires a console.
type Config struct {
	Backend Backend
	// Admin is the admin API handler every action is sent to, in process
	// (no token check: the console has checked the session). Going through
	// it validates an action and records it exactly as a CLI call is.
	Admin http.Handler
	// Token is the admin token the login form compares with.
	Token string
	Log   *slog.Logger
	Now   func() time.Time
	// IdleTimeout and Lifetime bound a session (defaults 30 min and 12 h).
	IdleTimeout, Lifetime time.Duration
	// RPOWindow is how far back the RPO sparkline looks (default 3 h).
	RPOWindow time.Duration
	// Identity, when set, marks an action's request context with who made
	// it: the audit trail records the console's token identity.
	Identity func(ctx context.Context) context.Context
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the pages under Prefix.
type Console struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	sessions *sessions
	pages    map[string]*template.Template
	mux      *http.ServeMux
}

// New builds the console handler.
func New(cfg Config) *Console {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 30 * time.Minute
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = 12 * time.Hour
	}
	if cfg.RPOWindow == 0 {
		cfg.RPOWindow = 3 * time.Hour
	}
	c := &Console{cfg: cfg, log: cfg.Log, now: cfg.Now,
		sessions: newSessions(cfg.IdleTimeout, cfg.Lifetime, cfg.Now),
		pages:    parsePages(), mux: http.NewServeMux()}
	c.routes()
	return c
}

func (c *Console) routes() {
	m := c.mux
	static, _ := fs.Sub(staticFS, "static")
	// The script and stylesheet need no session (they hold no data); the
	// directory itself is not listed.
	m.Handle("GET /ui/static/{file}", http.StripPrefix("/ui/static/", http.FileServer(http.FS(static))))
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.authed(c.logout))

	m.HandleFunc("GET /ui/{$}", c.authed(c.overview))
	m.HandleFunc("GET /ui/machines/{machine}", c.authed(c.machinePage))
	m.HandleFunc("GET /ui/machines/{machine}/confirm/{action}", c.authed(c.confirmPage))
	m.HandleFunc("POST /ui/machines/{machine}/actions/{action}", c.authed(c.runAction))
	m.HandleFunc("GET /ui/jobs", c.authed(c.jobsPage))
	m.HandleFunc("GET /ui/jobs/{id}", c.authed(c.jobPage))
	m.HandleFunc("GET /ui/jobs/{id}/events", c.authed(c.jobEvents))
	m.HandleFunc("GET /ui/targets", c.authed(c.targetsPage))
	m.HandleFunc("GET /ui/agents", c.authed(c.agentsPage))
	m.HandleFunc("GET /ui/plans", c.authed(c.plansPage))
	m.HandleFunc("GET /ui/drills", c.authed(c.drillsPage))
}

// ServeHTTP adds the security headers every answer carries, then routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Only our own embedded script and style run; nothing may frame us.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer a browser sends
	// "Origin: null" on its POSTs, which the Origin check must refuse.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}
