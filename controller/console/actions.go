package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/lifecycle"
)

// action is one button of a machine: which lifecycle action it is (the
// word `machines show` lists in allowed_actions), the admin API call it
// makes (the CLI's), and what the confirmation says will happen.
type action struct {
	Name      string // in the console's URLs
	Label     string
	Lifecycle lifecycle.Action // as listed in api.Machine.AllowedActions
	Path      string           // the admin API route, POST
	Body      func(machine string) any
	Danger    bool
	// Explain says what will happen, for the confirmation; %[1]s is the
	// machine, %[2]s its target.
	Explain string
}

// actions are offered in this order, each only when the machine's state
// allows it.
var actions = []action{
	{Name: "test-failover", Label: "Test failover", Lifecycle: lifecycle.TestFailover, Path: "/v1/failover",
		Body: func(m string) any { return api.FailoverRequest{Machine: m, Test: true} },
		Explain: "Start a test failover of %[1]s at target %[2]s: clones of its staged disks at the newest point are " +
			"started under a test name, isolated (FERRY_TEST=1), while replication goes on. The production machine is " +
			"not touched. End the test with Clean up."},
	{Name: "cleanup", Label: "Clean up", Lifecycle: lifecycle.Cleanup, Path: "/v1/cleanup",
		Body: func(m string) any { return api.MachineActionRequest{Machine: m} },
		Explain: "Clean up %[1]s at target %[2]s: stop the machine the test (or uncommitted failover) started there " +
			"and delete its disks, leaving the recovery site as it was before; replication carries on."},
	{Name: "failover", Label: "Failover", Lifecycle: lifecycle.Failover, Path: "/v1/failover", Danger: true,
		Body: func(m string) any { return api.FailoverRequest{Machine: m} },
		Explain: "Fail %[1]s over to target %[2]s: take a fresh cycle if the source is reachable (else use the newest " +
			"complete point) and start the machine at the recovery site. Writes made at home after that point are not " +
			"in it. Commit it, or clean it up to roll back, afterwards."},
	{Name: "commit", Label: "Commit", Lifecycle: lifecycle.Commit, Path: "/v1/commit", Danger: true,
		Body: func(m string) any { return api.MachineActionRequest{Machine: m} },
		Explain: "Commit the failover of %[1]s at target %[2]s: the machine stays at the recovery site, the points a " +
			"re-protection does not need are deleted, and changing point is no longer possible."},
	{Name: "failback", Label: "Failback", Lifecycle: lifecycle.Failback, Path: "/v1/failback", Danger: true,
		Body: func(m string) any { return api.MachineActionRequest{Machine: m} },
		Explain: "Fail %[1]s back home with no data loss: stop it at target %[2]s, ship its last changes home, and " +
			"start it at home again."},
}

func actionNamed(name string) (action, bool) {
	for _, a := range actions {
		if a.Name == name {
			return a, true
		}
	}
	return action{}, false
}

// allowedActions are the console actions the machine's state allows now.
func allowedActions(m api.Machine) []action {
	var out []action
	for _, a := range actions {
		if slices.Contains(m.AllowedActions, string(a.Lifecycle)) {
			out = append(out, a)
		}
	}
	return out
}

func (a action) explain(m api.Machine) string {
	target := m.Target
	if target == "" {
		target = "(none set)"
	}
	return fmt.Sprintf(a.Explain, m.Name, target)
}

type confirmData struct {
	Machine api.Machine
	Action  action
	Explain string
}

// confirmPage names what the action will do and posts it on confirmation.
func (c *Console) confirmPage(w http.ResponseWriter, r *http.Request, ss *session) {
	a, ok := actionNamed(r.PathValue("action"))
	if !ok {
		c.notFound(w, ss, "no action "+r.PathValue("action"))
		return
	}
	m, err := c.cfg.Backend.Machine(r.Context(), r.PathValue("machine"))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	c.render(w, http.StatusOK, "confirm", c.page(ss, "machines", a.Label+" "+m.Name,
		confirmData{Machine: m, Action: a, Explain: a.explain(m)}))
}

// runAction sends the action to the admin API in process and shows its job.
// The admin API checks it against the machine's state, as for the CLI.
func (c *Console) runAction(w http.ResponseWriter, r *http.Request, ss *session) {
	a, ok := actionNamed(r.PathValue("action"))
	if !ok {
		c.notFound(w, ss, "no action "+r.PathValue("action"))
		return
	}
	machine := r.PathValue("machine")
	body, err := json.Marshal(a.Body(machine))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	ctx := r.Context()
	if c.cfg.Identity != nil {
		ctx = c.cfg.Identity(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.Path, bytes.NewReader(body))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = r.RemoteAddr
	rec := newRecorder()
	c.cfg.Admin.ServeHTTP(rec, req)
	if rec.Code/100 != 2 {
		var ae api.Error
		if json.Unmarshal(rec.Body.Bytes(), &ae) != nil || ae.Message == "" {
			ae.Message = fmt.Sprintf("HTTP %d: %s", rec.Code, rec.Body.String())
		}
		c.log.Info("console action refused", "action", a.Name, "machine", machine, "err", ae.Message)
		m, _ := c.cfg.Backend.Machine(r.Context(), machine)
		if m.Name == "" {
			m.Name = machine
		}
		d := c.page(ss, "machines", a.Label+" "+machine, confirmData{Machine: m, Action: a, Explain: a.explain(m)})
		d.Error = a.Label + " of " + machine + " refused: " + ae.Message
		c.render(w, rec.Code, "confirm", d)
		return
	}
	var j api.Job
	if err := json.Unmarshal(rec.Body.Bytes(), &j); err != nil || j.ID == "" {
		c.failed(w, ss, fmt.Errorf("the admin API answered %q", rec.Body.String()))
		return
	}
	c.log.Info("console action started", "action", a.Name, "machine", machine, "job", j.ID)
	http.Redirect(w, r, Prefix+"jobs/"+j.ID, http.StatusSeeOther)
}

// recorder keeps an in-process admin answer (a job or an error: small).
type recorder struct {
	header http.Header
	Code   int
	Body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}, Code: http.StatusOK} }

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.Body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.Code = code }
