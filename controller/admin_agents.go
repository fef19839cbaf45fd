package controller

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Agents lists enrolled agents with their live state.
func (s *Server) Agents(ctx context.Context) ([]api.Agent, error) {
	as, err := s.cat.Agents(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Agent{}
	for _, a := range as {
		x := api.Agent{ID: a.ID, Name: a.Name, Address: a.Address, Version: a.Version, Platform: a.Platform,
			Hostname: a.Hostname, Enrolled: a.Enrolled, LastSeen: a.LastSeen, Revoked: a.Revoked, CertExpires: a.CertNotAfter}
		if c, ok := s.agents.get(a.ID); ok {
			x.Connected = true
			x.LastSeen = s.now()
			x.Address = c.addr
			x.ClockSkewMS = c.clockOffset().Milliseconds()
			if p := c.permissions(); p != nil {
				x.Allows = &api.AgentPermissions{PlanScripts: p.PlanScripts, ExecDrivers: p.ExecDrivers}
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// RevokeAgent revokes an agent's certificates and ends its session.
func (s *Server) RevokeAgent(ctx context.Context, agent string) error {
	a, err := s.cat.RevokeAgent(ctx, agent)
	if err != nil {
		return apiErr(err)
	}
	if c, ok := s.agents.get(a.ID); ok {
		c.sess.Close()
	}
	s.log.Info("agent revoked", "agent", a.Name)
	return nil
}

// RemoveAgent forgets an agent that protects nothing.
func (s *Server) RemoveAgent(ctx context.Context, agent string) error {
	a, err := s.cat.RemoveAgent(ctx, agent)
	if err != nil {
		return apiErr(err)
	}
	if c, ok := s.agents.get(a.ID); ok {
		c.sess.Close()
	}
	return nil
}

// Inventory asks a connected agent what it can protect.
func (s *Server) Inventory(ctx context.Context, agent string) ([]api.InventoryItem, error) {
	a, err := s.cat.Agent(ctx, agent)
	if err != nil {
		return nil, apiErr(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var resp msg.InventoryResponse
	if err := s.agents.call(ctx, a.ID, a.Name, msg.MethodInventory, struct{}{}, &resp); err != nil {
		return nil, apiErr(err)
	}
	out := []api.InventoryItem{}
	for _, it := range resp.Items {
		out = append(out, api.InventoryItem(it))
	}
	return out, nil
}
