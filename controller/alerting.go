package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/ferrydr/ferry/controller/alerts"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/internal/buildinfo"
)

// The alert engine: every cfg.Alerts.Every the open incidents are judged
// (alerts.Open) against those the catalog holds open; a new one is
// recorded and fired once, one that cleared is forgotten and resolved
// once. Keeping them in the catalog makes a restart neither refire nor
// forget them. Job events fire as jobs end and have no resolution.

func (s *Server) newNotifier() *alerts.Notifier {
	t := s.cfg.Alerts
	return &alerts.Notifier{
		Client: &http.Client{}, Backoff: t.Backoff, MaxBackoff: t.MaxBackoff, MaxAttempts: t.MaxAttempts,
		UserAgent: "ferry/" + buildinfo.Version, Log: s.log.With("component", "alerts"),
		Report: s.alertOutcome,
	}
}

// alertLoop judges incidents until ctx ends.
func (s *Server) alertLoop(ctx context.Context) {
	// Deliveries queued before a restart were lost with their queues.
	if as, err := s.cat.Alerts(ctx); err == nil {
		for _, a := range as {
			s.cat.UpdateAlertStatus(ctx, a.Name, func(st *api.AlertStatus) { st.Pending = 0 })
		}
	}
	started := s.now()
	t := time.NewTicker(s.cfg.Alerts.Every)
	defer t.Stop()
	for {
		if err := s.judgeIncidents(ctx, started); err != nil && ctx.Err() == nil {
			s.log.Warn("alerts: judging incidents failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) judgeIncidents(ctx context.Context, started time.Time) error {
	s.alertMu.Lock() // against a rule being added (catchUp)
	defer s.alertMu.Unlock()
	in := alerts.Input{Now: s.now(), Started: started, AgentLostAfter: s.cfg.Alerts.AgentLostAfter}
	var err error
	if in.Machines, err = s.Machines(ctx); err != nil {
		return err
	}
	if in.Agents, err = s.Agents(ctx); err != nil {
		return err
	}
	if s.disk != nil && s.disk.reserve > 0 {
		if free, _, err := s.disk.free(s.cfg.DataDir); err == nil {
			in.DiskFree, in.DiskReserve = free, s.disk.reserve
		}
	}
	open := alerts.Open(in)
	held, err := s.cat.Incidents(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	for _, c := range open {
		if _, ok := held[c.Key]; ok {
			delete(held, c.Key)
			continue
		}
		if err := s.cat.OpenIncident(ctx, catalog.Incident{Key: c.Key, Event: c.Event, Subject: c.Subject, Opened: now, Detail: c.Detail}); err != nil {
			return err
		}
		s.log.Warn("alert incident opened", "incident", c.Key, "detail", c.Detail)
		s.fire(ctx, c, api.AlertFiring, now)
	}
	for key, inc := range held { // held and no longer open: cleared
		if err := s.cat.CloseIncident(ctx, key); err != nil {
			return err
		}
		s.log.Info("alert incident resolved", "incident", key)
		s.fire(ctx, alerts.Condition{Key: key, Event: inc.Event, Subject: inc.Subject,
			Summary: alerts.Summary(inc.Event, inc.Subject) + " resolved", Detail: "was: " + inc.Detail}, api.AlertResolved, inc.Opened)
	}
	return nil
}

// catchUp sends a new rule the firing of each incident already open that
// it subscribes to: a rule added during an incident still pages, once.
func (s *Server) catchUp(ctx context.Context, r api.AlertRule) error {
	held, err := s.cat.Incidents(ctx)
	if err != nil {
		return err
	}
	for _, inc := range held {
		if slices.Contains(r.On, inc.Event) && s.runCtx != nil {
			c := alerts.Condition{Key: inc.Key, Event: inc.Event, Subject: inc.Subject, Summary: alerts.Summary(inc.Event, inc.Subject), Detail: inc.Detail}
			s.notifier.Send(s.runCtx, r, s.payload(r.Name, c, api.AlertFiring, inc.Opened))
		}
	}
	return nil
}

// fire sends c to every rule subscribed to its event.
func (s *Server) fire(ctx context.Context, c alerts.Condition, status string, started time.Time) {
	rules, err := s.cat.Alerts(ctx)
	if err != nil {
		s.log.Error("alerts: rules unreadable; notification lost", "incident", c.Key, "err", err)
		return
	}
	for _, r := range rules {
		if slices.Contains(r.On, c.Event) {
			s.notifier.Send(s.runCtx, r.AlertRule, s.payload(r.Name, c, status, started))
		}
	}
}

func (s *Server) payload(rule string, c alerts.Condition, status string, started time.Time) api.AlertPayload {
	host, _ := os.Hostname()
	b := make([]byte, 8)
	rand.Read(b)
	return api.AlertPayload{Version: 1, Alert: rule, Event: c.Event, Status: status, Incident: c.Key, Subject: c.Subject,
		Summary: c.Summary, Detail: c.Detail, Started: started.UTC(), Time: s.now().UTC(), Controller: host,
		Delivery: hex.EncodeToString(b)}
}

// alertJobEnded fires job-failed or drill-failed for a job that ended
// failed or partial.
func (s *Server) alertJobEnded(j api.Job) {
	// A job ending as the controller stops is not notified: the queues
	// and the catalog are going away.
	if c, ok := alerts.JobEvent(j); ok && s.runCtx != nil && s.runCtx.Err() == nil {
		s.fire(s.runCtx, c, api.AlertFiring, j.Created)
	}
}

// alertDrillEnded fires drill-failed for a drill run that failed.
func (s *Server) alertDrillEnded(r api.DrillRun) {
	if c, ok := alerts.DrillEvent(r); ok && s.runCtx != nil && s.runCtx.Err() == nil {
		s.fire(s.runCtx, c, api.AlertFiring, r.Started)
	}
}

// alertOutcome keeps a rule's delivery status (alerts list shows it).
func (s *Server) alertOutcome(rule string, o alerts.Outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := s.now().UTC()
	err := s.cat.UpdateAlertStatus(ctx, rule, func(st *api.AlertStatus) {
		switch o.Kind {
		case alerts.Queued:
			st.Pending++
		case alerts.Sent:
			st.Pending = max(st.Pending-1, 0)
			st.Sent++
			st.LastSent = &now
		case alerts.Failed:
			st.FailedAttempts++
			st.LastError, st.LastErrorAt = o.Err.Error(), &now
		case alerts.Dropped:
			if o.Attempt > 0 { // else refused by a full queue: never queued, never tried
				st.Pending = max(st.Pending-1, 0)
				st.FailedAttempts++
			}
			st.Dropped++
			st.LastError, st.LastErrorAt = "given up: "+o.Err.Error(), &now
		}
	})
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		s.log.Warn("alerts: status not recorded", "alert", rule, "err", err)
	}
}
