package controller

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
)

// RecordAudit appends an entry to the catalog's audit trail
// (admin.Audit): every mutating admin call passes here.
func (s *Server) RecordAudit(ctx context.Context, e api.AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = s.now().UTC()
	}
	_, err := s.cat.AppendAudit(ctx, e)
	return err
}

// AuditLog lists the newest limit entries, oldest first (admin.Audit).
func (s *Server) AuditLog(ctx context.Context, limit int) ([]api.AuditEntry, error) {
	return s.cat.Audit(ctx, limit)
}
