package controller

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// drillTick is how often the scheduler looks for due drills.
const drillTick = 5 * time.Second

// drillRunsShown bounds the runs `drills show` returns.
const drillRunsShown = 10

// CreateDrill stores a drill; the scheduler runs it every d.Every.
func (s *Server) CreateDrill(ctx context.Context, d api.Drill) (api.Drill, error) {
	if err := validName("drill", d.Name); err != nil {
		return d, err
	}
	switch {
	case d.Machine == "" && d.Plan == "":
		return d, api.Errorf(api.CodeInvalid, "name the machine to drill (--machine M)")
	case d.Machine != "" && d.Plan != "":
		return d, api.Errorf(api.CodeInvalid, "give --machine or --plan, not both")
	case d.Plan != "":
		return d, api.Errorf(api.CodeInvalid, "drills of recovery plans (--plan) are not available yet: create one drill per machine (--machine)")
	case d.Every.Std() < time.Minute:
		return d, api.Errorf(api.CodeInvalid, "--every %s: a drill runs at most once a minute", d.Every)
	case d.Timeout.Std() < 0:
		return d, api.Errorf(api.CodeInvalid, "--timeout must not be negative")
	case d.Port < 0 || d.Port > 65535:
		return d, api.Errorf(api.CodeInvalid, "--port %d: want 1 to 65535", d.Port)
	}
	if d.Timeout == 0 {
		d.Timeout = api.Duration(api.DefaultDrillTimeout)
	}
	if d.UpMarker == "" && d.Port == 0 {
		d.UpMarker = api.DefaultDrillUpMarker
	}
	if _, err := s.cat.Machine(ctx, d.Machine); err != nil {
		return d, apiErr(err)
	}
	if d.Target != "" {
		if _, _, err := s.cat.Target(ctx, d.Target); err != nil {
			return d, apiErr(err)
		}
	}
	d.Created = s.now()
	if err := s.cat.PutDrill(ctx, d, true); err != nil {
		return d, apiErr(err)
	}
	return s.drillView(ctx, d)
}

// Drills lists drills with their last run and next due time.
func (s *Server) Drills(ctx context.Context) ([]api.Drill, error) {
	ds, err := s.cat.Drills(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Drill{}
	for _, d := range ds {
		v, err := s.drillView(ctx, d)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Drill shows a drill and its newest runs' reports.
func (s *Server) Drill(ctx context.Context, name string) (api.DrillDetail, error) {
	d, err := s.cat.Drill(ctx, name)
	if err != nil {
		return api.DrillDetail{}, apiErr(err)
	}
	v, err := s.drillView(ctx, d)
	if err != nil {
		return api.DrillDetail{}, err
	}
	runs, err := s.cat.DrillRuns(ctx, name, drillRunsShown)
	if runs == nil {
		runs = []api.DrillRun{}
	}
	return api.DrillDetail{Drill: v, Runs: runs}, err
}

// RunDrill starts a drill now and returns its run as it started; `drills
// show` follows it (the CLI waits unless --no-wait).
func (s *Server) RunDrill(ctx context.Context, name string) (api.DrillRun, error) {
	d, err := s.cat.Drill(ctx, name)
	if err != nil {
		return api.DrillRun{}, apiErr(err)
	}
	started := make(chan api.DrillRun, 1)
	refused := make(chan error, 1)
	s.spawn(func() {
		if _, err := s.runDrill(s.runCtx, d, func(r api.DrillRun) { started <- r }); err != nil {
			refused <- err
		}
	})
	select {
	case r := <-started:
		return r, nil
	case err := <-refused:
		return api.DrillRun{}, err
	}
}

// DeleteDrill deletes a drill (cancelling its run, which cleans up) and
// its reports but those of passed runs (their points stay verified).
func (s *Server) DeleteDrill(ctx context.Context, name string) error {
	d, err := s.cat.Drill(ctx, name)
	if err != nil {
		return apiErr(err)
	}
	if s.drills.running(name) {
		if _, err := s.drills.preempt(ctx, d.Machine, "drill "+name+" was deleted"); err != nil {
			return err
		}
	}
	return apiErr(s.cat.DeleteDrill(ctx, name))
}

// drillView fills in what the controller knows of a drill.
func (s *Server) drillView(ctx context.Context, d api.Drill) (api.Drill, error) {
	runs, err := s.cat.DrillRuns(ctx, d.Name, 1)
	if err != nil {
		return d, err
	}
	from := d.Created
	if len(runs) > 0 {
		d.LastRun = &runs[0]
		from = runs[0].Started
	}
	d.Running = s.drills.running(d.Name)
	if !d.Paused {
		next := from.Add(d.Every.Std())
		d.NextRun = &next
	}
	return d, nil
}

// drillLoop runs each drill when it is due: Every after its last run (or
// its creation), one run at a time per machine.
func (s *Server) drillLoop(ctx context.Context) {
	if err := s.cat.AbandonDrillRuns(ctx); err != nil {
		s.log.Warn("marking interrupted drill runs failed", "err", err)
	}
	t := time.NewTicker(drillTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ds, err := s.Drills(ctx)
		if err != nil {
			continue
		}
		for _, d := range ds {
			if d.Running || d.NextRun == nil || d.NextRun.After(s.now()) {
				continue
			}
			s.spawn(func() {
				if _, err := s.runDrill(ctx, d, nil); err != nil {
					// A machine that cannot be drilled now (failed over, busy)
					// is tried again at the next tick's due check only after
					// the interval: the refusal is a run of its own.
					s.recordRefusedDrill(ctx, d, err)
				}
			})
		}
	}
}

// recordRefusedDrill keeps a scheduled drill that could not start as a
// failed run, so it is not retried every tick and `drills show` says why.
func (s *Server) recordRefusedDrill(ctx context.Context, d api.Drill, err error) {
	now := s.now()
	r := api.DrillRun{Drill: d.Name, Machine: d.Machine, Started: now, Ended: &now, Result: api.DrillFailed,
		Error: "not started: " + err.Error(), Phases: []api.DrillPhase{}}
	if _, perr := s.cat.PutDrillRun(ctx, r); perr != nil {
		s.log.Warn("recording a drill that did not start failed", "drill", d.Name, "err", perr)
	}
}
