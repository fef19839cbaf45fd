package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/storage"
)

// AuditPoints runs one point-audit pass now, over one machine or all,
// and waits for it (a background pass running is finished first).
func (s *Server) AuditPoints(ctx context.Context, req api.AuditRequest) (api.AuditReport, error) {
	if req.Rate < 0 {
		return api.AuditReport{}, api.Errorf(api.CodeInvalid, "rate %d: want bytes/s (0 = the controller's --audit-rate)", req.Rate)
	}
	if req.Machine != "" {
		pts, err := s.repo.Points(ctx, req.Machine)
		if err != nil {
			return api.AuditReport{}, err
		}
		if len(pts) == 0 {
			if _, err := s.cat.Machine(ctx, req.Machine); errors.Is(err, catalog.ErrNotFound) {
				return api.AuditReport{}, api.Errorf(api.CodeNotFound, "machine %s has no points and is not protected", req.Machine)
			}
		}
	}
	return s.audit.Pass(ctx, req.Machine, req.Rate)
}

// machineAudit is the point audit of one machine as `machines show` gives
// it: each retained point's last audit and what it found, and the pass.
func (s *Server) machineAudit(ctx context.Context, machine string, pts []storage.Point) (*api.MachineAudit, error) {
	rows, err := s.cat.PointAudits(ctx, machine)
	if err != nil {
		return nil, err
	}
	out := &api.MachineAudit{Pass: s.audit.Progress(), Points: []api.PointAudit{}}
	for _, p := range pts {
		pa := api.PointAudit{PointID: p.ID, Damaged: p.Damaged, Damage: []api.PointDamage{}}
		if r, ok := rows[p.ID]; ok {
			at := r.Audited
			pa.AuditedAt = &at
			if r.Damage != nil {
				pa.Damage = r.Damage
			}
		}
		out.Points = append(out.Points, pa)
	}
	return out, nil
}

// damageDetail names, for the health reason, the damaged points with the
// disk and blocks the last audit found (the first few).
func damageDetail(a *api.MachineAudit) string {
	const show = 3
	var parts []string
	more := 0
	add := func(s string) {
		if len(parts) == show {
			more++
			return
		}
		parts = append(parts, s)
	}
	for _, p := range a.Points {
		if !p.Damaged {
			continue // repaired since the last audit
		}
		if len(p.Damage) == 0 {
			add(fmt.Sprintf("point %d", p.PointID)) // found by ferry verify, not audited since
			continue
		}
		for _, d := range p.Damage {
			add(fmt.Sprintf("point %d disk %s %s", p.PointID, d.Disk, blocksText(d.Blocks)))
		}
	}
	if more > 0 {
		parts = append(parts, fmt.Sprintf("%d more", more))
	}
	return strings.Join(parts, ", ")
}

func blocksText(b []int64) string {
	const show = 4
	word := "block"
	if len(b) != 1 {
		word = "blocks"
	}
	var xs []string
	for i, n := range b {
		if i == show {
			xs = append(xs, fmt.Sprintf("… (%d in all)", len(b)))
			break
		}
		xs = append(xs, fmt.Sprint(n))
	}
	return word + " " + strings.Join(xs, ",")
}
