package controller

import (
	"context"
	"fmt"
	"net/url"
	"slices"

	"github.com/ferrydr/ferry/controller/alerts"
	"github.com/ferrydr/ferry/controller/api"
)

// CreateAlert adds a webhook rule; no events means every event.
func (s *Server) CreateAlert(ctx context.Context, r api.AlertRule) (api.Alert, error) {
	if err := validName("alert", r.Name); err != nil {
		return api.Alert{}, err
	}
	u, err := url.Parse(r.Webhook)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return api.Alert{}, api.Errorf(api.CodeInvalid, "webhook %q: want an http:// or https:// URL", r.Webhook)
	}
	if len(r.On) == 0 {
		r.On = slices.Clone(api.AlertEvents)
	}
	var on []string
	for _, ev := range r.On {
		if !slices.Contains(api.AlertEvents, ev) {
			return api.Alert{}, api.Errorf(api.CodeInvalid, "event %q: want one of %v", ev, api.AlertEvents)
		}
		if !slices.Contains(on, ev) {
			on = append(on, ev)
		}
	}
	r.On, r.Created = on, s.now().UTC()
	s.alertMu.Lock() // judgeIncidents neither fires it nor is missed in between
	err = s.cat.AddAlert(ctx, r)
	if err == nil {
		if cerr := s.catchUp(ctx, r); cerr != nil {
			s.log.Warn("alerts: open incidents not sent to the new rule", "alert", r.Name, "err", cerr)
		}
	}
	s.alertMu.Unlock()
	if err != nil {
		return api.Alert{}, apiErr(err)
	}
	s.log.Info("alert added", "alert", r.Name, "on", r.On)
	return s.Alert(ctx, r.Name)
}

// Alerts lists the rules with their delivery status.
func (s *Server) Alerts(ctx context.Context) ([]api.Alert, error) {
	return s.cat.Alerts(ctx)
}

// Alert shows one rule.
func (s *Server) Alert(ctx context.Context, name string) (api.Alert, error) {
	a, err := s.cat.Alert(ctx, name)
	return a, apiErr(err)
}

// RemoveAlert deletes a rule; its queued notifications are still tried.
func (s *Server) RemoveAlert(ctx context.Context, name string) error {
	return apiErr(s.cat.DeleteAlert(ctx, name))
}

// TestAlert sends a test notification now, once, and says whether the
// webhook accepted it; the result counts in the rule's status.
func (s *Server) TestAlert(ctx context.Context, name string) (api.Alert, error) {
	a, err := s.cat.Alert(ctx, name)
	if err != nil {
		return api.Alert{}, apiErr(err)
	}
	c := alerts.Condition{Key: api.EventTest + "/" + name, Event: api.EventTest, Subject: name,
		Summary: fmt.Sprintf("test notification of alert %s (ferry alerts test)", name)}
	p := s.payload(name, c, api.AlertFiring, s.now())
	if err := s.notifier.Post(ctx, a.Webhook, p); err != nil {
		s.alertOutcome(name, alerts.Outcome{Kind: alerts.Failed, Delivery: p.Delivery, Attempt: 1, Err: err})
		return api.Alert{}, api.Errorf(api.CodeUnavailable, "alert %s: test notification not delivered: %v", name, err)
	}
	s.alertOutcome(name, alerts.Outcome{Kind: alerts.Sent, Delivery: p.Delivery, Attempt: 1})
	return s.Alert(ctx, name)
}
