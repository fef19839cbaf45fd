package console

import (
	"net/http"
	"slices"

	"github.com/ferrydr/ferry/controller/api"
)

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
