package console

import (
	"html/template"
	"net/http"
	"slices"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

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
