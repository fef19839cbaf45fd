package controller

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

func validPolicy(p api.Policy) error {
	switch {
	case p.RPEvery.Std() < time.Second:
		return api.Errorf(api.CodeInvalid, "rp-every must be at least 1s")
	case p.AppEvery.Std() < time.Second:
		return api.Errorf(api.CodeInvalid, "app-every must be at least 1s")
	case p.RPOThreshold.Std() <= 0:
		return api.Errorf(api.CodeInvalid, "rpo-threshold must be positive")
	case p.Retention.Std() < 0:
		return api.Errorf(api.CodeInvalid, "retention must not be negative")
	case p.Retention.Std() > 0 && p.Retention.Std() < p.RPEvery.Std():
		return api.Errorf(api.CodeInvalid, "retention %s is shorter than the point interval (rp-every %s): it would keep no point between cycles; give a retention of at least %s, or 0 to keep every point",
			p.Retention, p.RPEvery, p.RPEvery)
	case p.Bandwidth < 0:
		return api.Errorf(api.CodeInvalid, "bandwidth must not be negative")
	case p.BlockSize < 4<<10 || p.BlockSize > 1<<20 || p.BlockSize&(p.BlockSize-1) != 0:
		return api.Errorf(api.CodeInvalid, "block size must be a power of two from 4KiB to 1MiB")
	}
	return nil
}

// Policies lists policies.
func (s *Server) Policies(ctx context.Context) ([]api.Policy, error) { return s.cat.Policies(ctx) }

// CreatePolicy creates a policy.
func (s *Server) CreatePolicy(ctx context.Context, p api.Policy) (api.Policy, error) {
	if err := validName("policy", p.Name); err != nil {
		return p, err
	}
	if err := validPolicy(p); err != nil {
		return p, err
	}
	return p, apiErr(s.cat.PutPolicy(ctx, p, true))
}

// UpdatePolicy changes the set fields and pushes the new settings to the
// agents of the machines that use it. The block size of a machine is fixed
// at protection, so a new block size applies to machines protected later.
func (s *Server) UpdatePolicy(ctx context.Context, name string, u api.PolicyUpdate) (api.Policy, error) {
	p, err := s.cat.Policy(ctx, name)
	if err != nil {
		return p, apiErr(err)
	}
	u.Apply(&p)
	if err := validPolicy(p); err != nil {
		return p, err
	}
	if err := s.cat.PutPolicy(ctx, p, false); err != nil {
		return p, apiErr(err)
	}
	ms, err := s.cat.Machines(ctx, "")
	if err != nil {
		return p, err
	}
	pushed := map[string]bool{}
	for _, m := range ms {
		if m.Policy == name && !pushed[m.AgentID] {
			pushed[m.AgentID] = true
			if err := s.pushConfig(ctx, m.AgentID); err != nil {
				s.log.Warn("config push failed", "agent", m.AgentID, "err", err)
			}
		}
	}
	return p, nil
}

// DeletePolicy deletes an unused policy.
func (s *Server) DeletePolicy(ctx context.Context, name string) error {
	if name == "default" {
		return api.Errorf(api.CodeInvalid, "the default policy cannot be deleted")
	}
	return apiErr(s.cat.DeletePolicy(ctx, name))
}
