package main

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
)

// pollEvery is how often `protect --wait` asks for the machine: the agent
// reports about once a second.
const pollEvery = 500 * time.Millisecond

// syncLabel names what an initial sync's cycle is doing.
var syncLabel = map[string]string{api.PhaseShipping: "initial sync", api.PhaseResync: "hash resync"}

// waitFirstPoint follows a machine's initial sync until its first recovery
// point, drawing its progress, and prints the point (with --json, the
// machine once it has it). Replication errors are shown and waited out:
// the agent retries them.
func waitFirstPoint(ctx context.Context, g *globals, cl *admin.Client, machine string) error {
	out := newProgressOut(g.stdout)
	lastErr := ""
	for {
		m, err := cl.Machine(ctx, machine)
		if err != nil {
			out.finish()
			return err
		}
		if m.LastPoint != nil {
			return printFirstPoint(ctx, g, cl, out, m)
		}
		if !g.json {
			switch p := m.Progress; {
			case p.Active() && p.BytesTotal > 0:
				out.update(fromReplication(syncLabel[p.Phase], p))
			case m.Replication.LastError != "" && m.Replication.LastError != lastErr:
				out.println("replication error (the agent retries): %s", m.Replication.LastError)
			}
			lastErr = m.Replication.LastError
		}
		select {
		case <-ctx.Done():
			out.finish()
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// printFirstPoint completes the bar and prints the machine's first point.
func printFirstPoint(ctx context.Context, g *globals, cl *admin.Client, out *progressOut, m api.Machine) error {
	if g.json {
		return g.printJSON(m)
	}
	if p := m.Progress; p != nil && p.BytesTotal > 0 {
		out.update(fromReplication("initial sync", &api.ReplicationProgress{
			BytesDone: p.BytesTotal, BytesTotal: p.BytesTotal, RateBPS: p.RateBPS}))
	}
	pts, err := cl.Points(ctx, m.Name)
	if err != nil || len(pts) == 0 {
		out.println("%s: first point at %s", m.Name, fmtTime(*m.LastPoint))
		return err
	}
	p := pts[0]
	out.println("%s: first point %d at %s (%s, %s)", m.Name, p.ID, fmtTime(p.Time), p.Consistency, api.FormatSize(p.Bytes))
	return nil
}
