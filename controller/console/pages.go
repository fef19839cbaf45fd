package console

import (
	"bytes"
	"errors"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// pageData is what every template gets; Data is the page's own.
type pageData struct {
	Title string
	Nav   string // the highlighted menu entry; "" hides the menu (login)
	CSRF  string
	Error string
	Now   time.Time
	Data  any
}

func (c *Console) page(ss *session, nav, title string, data any) pageData {
	return pageData{Title: title, Nav: nav, CSRF: ss.csrf, Now: c.now(), Data: data}
}

var funcs = template.FuncMap{
	"rpo": func(s *float64) string {
		if s == nil {
			return "—"
		}
		return fmtSeconds(*s)
	},
	"rposecs": func(s *float64) string {
		if s == nil {
			return ""
		}
		return formatFloat(*s)
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"whenp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"rfc3339": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	},
	"size": api.FormatSize,
	"pct":  func(f float64) string { return formatFloat(math.Round(f*1000) / 10) },
	"span": fmtDuration,
}

// formatFloat is the shortest exact decimal of f.
func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// parsePages parses each page with the shared layout.
func parsePages() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, name := range []string{"login", "overview", "machine", "confirm", "jobs", "job", "targets", "agents", "plans", "drills", "message"} {
		out[name] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return out
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 instead of half a page.
func (c *Console) render(w http.ResponseWriter, status int, name string, d pageData) {
	if d.Now.IsZero() {
		d.Now = c.now()
	}
	var buf bytes.Buffer
	if err := c.pages[name].Execute(&buf, d); err != nil {
		c.log.Error("console template", "page", name, "err", err)
		http.Error(w, "console page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// failed shows a backend error, with the status its API code maps to.
func (c *Console) failed(w http.ResponseWriter, ss *session, err error) {
	status := http.StatusInternalServerError
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeNotFound:
			status = http.StatusNotFound
		case api.CodeInvalid:
			status = http.StatusBadRequest
		case api.CodeConflict, api.CodeBusy, api.CodeExists:
			status = http.StatusConflict
		}
	}
	d := c.page(ss, "", "Error", nil)
	d.Error = err.Error()
	c.render(w, status, "message", d)
}

func (c *Console) notFound(w http.ResponseWriter, ss *session, what string) {
	d := c.page(ss, "", "Not found", nil)
	d.Error = what
	c.render(w, http.StatusNotFound, "message", d)
}

// machineRow is one line of the overview.
type machineRow struct {
	api.Machine
	Spark   template.HTML
	Actions []action
}

type overviewData struct {
	Machines []machineRow
	Window   time.Duration
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, ss *session) {
	ctx := r.Context()
	ms, err := c.cfg.Backend.Machines(ctx)
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	thresholds := map[string]float64{}
	if ps, err := c.cfg.Backend.Policies(ctx); err == nil {
		for _, p := range ps {
			thresholds[p.Name] = p.RPOThreshold.Std().Seconds()
		}
	}
	now := c.now()
	rows := make([]machineRow, 0, len(ms))
	for _, m := range ms {
		row := machineRow{Machine: m, Actions: allowedActions(m)}
		if pts, err := c.cfg.Backend.Points(ctx, m.Name); err == nil {
			row.Spark = sparkline(rpoHistory(pts, now, c.cfg.RPOWindow, sparkSamples), thresholds[m.Policy], c.cfg.RPOWindow)
		}
		rows = append(rows, row)
	}
	c.render(w, http.StatusOK, "overview", c.page(ss, "machines", "Machines", overviewData{Machines: rows, Window: c.cfg.RPOWindow}))
}

// cycle is one replication cycle as its point records it.
type cycle struct {
	api.Point
	Since time.Duration // since the previous point: the cycle interval
}

type machineData struct {
	Machine api.Machine
	Points  []api.Point // newest first
	Cycles  []cycle     // the newest maxCycles
	Jobs    []api.Job   // this machine's, newest first
	Actions []action
	Spark   template.HTML
	Window  time.Duration
}

const maxCycles = 50

func (c *Console) machinePage(w http.ResponseWriter, r *http.Request, ss *session) {
	ctx := r.Context()
	m, err := c.cfg.Backend.Machine(ctx, r.PathValue("machine"))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	pts, err := c.cfg.Backend.Points(ctx, m.Name)
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	slices.SortFunc(pts, func(a, b api.Point) int { return a.Time.Compare(b.Time) })
	d := machineData{Machine: m, Actions: allowedActions(m), Window: c.cfg.RPOWindow}
	var threshold float64
	if ps, err := c.cfg.Backend.Policies(ctx); err == nil {
		for _, p := range ps {
			if p.Name == m.Policy {
				threshold = p.RPOThreshold.Std().Seconds()
			}
		}
	}
	d.Spark = sparkline(rpoHistory(pts, c.now(), c.cfg.RPOWindow, sparkSamples), threshold, c.cfg.RPOWindow)
	for i, p := range pts {
		cy := cycle{Point: p}
		if i > 0 {
			cy.Since = p.Time.Sub(pts[i-1].Time)
		}
		d.Cycles = append(d.Cycles, cy)
	}
	slices.Reverse(pts)
	slices.Reverse(d.Cycles)
	d.Points = pts
	if len(d.Cycles) > maxCycles {
		d.Cycles = d.Cycles[:maxCycles]
	}
	if jobs, err := c.cfg.Backend.Jobs(ctx); err == nil {
		for _, j := range newestFirst(jobs) {
			if slices.ContainsFunc(j.Machines, func(jm api.JobMachine) bool { return jm.Name == m.Name }) {
				d.Jobs = append(d.Jobs, j)
			}
		}
	}
	c.render(w, http.StatusOK, "machine", c.page(ss, "machines", m.Name, d))
}

func newestFirst(jobs []api.Job) []api.Job {
	out := slices.Clone(jobs)
	slices.SortStableFunc(out, func(a, b api.Job) int { return b.Created.Compare(a.Created) })
	return out
}

func (c *Console) jobsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	jobs, err := c.cfg.Backend.Jobs(r.Context())
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	c.render(w, http.StatusOK, "jobs", c.page(ss, "jobs", "Jobs", newestFirst(jobs)))
}

func (c *Console) jobPage(w http.ResponseWriter, r *http.Request, ss *session) {
	j, err := c.cfg.Backend.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	c.render(w, http.StatusOK, "job", c.page(ss, "jobs", "Job "+j.ID, j))
}

func (c *Console) targetsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	ts, err := c.cfg.Backend.Targets(r.Context())
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	c.render(w, http.StatusOK, "targets", c.page(ss, "targets", "Targets", ts))
}

func (c *Console) agentsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	as, err := c.cfg.Backend.Agents(r.Context())
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	c.render(w, http.StatusOK, "agents", c.page(ss, "agents", "Agents", as))
}

type plansData struct {
	Available bool
	Plans     []api.Plan
}

// plansPage lists recovery plans when the controller serves them.
func (c *Console) plansPage(w http.ResponseWriter, r *http.Request, ss *session) {
	var d plansData
	if p, ok := c.cfg.Backend.(Plans); ok {
		ps, err := p.Plans(r.Context())
		if err != nil {
			c.failed(w, ss, err)
			return
		}
		d = plansData{Available: true, Plans: ps}
	}
	c.render(w, http.StatusOK, "plans", c.page(ss, "plans", "Plans", d))
}

// drillsPage is the slot for recovery drills (not served yet).
func (c *Console) drillsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	c.render(w, http.StatusOK, "drills", c.page(ss, "drills", "Drills", nil))
}
