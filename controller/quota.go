package controller

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/storage"
)

// QuotaReason is the health reason of a machine over the per-machine
// quota (ferry serve --machine-quota, docs/limits.md).
const QuotaReason = "machine over its storage quota"

// ErrQuota is the refusal of a cycle of a machine over its quota.
var ErrQuota = errors.New(QuotaReason)

// QuotaError says how much a machine's retained points stored and what
// the quota is. It matches ErrQuota and protocol.ErrUnavailable (retention
// or a larger quota lets replication go on).
type QuotaError struct {
	Machine     string
	Used, Quota int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("%s: %s: its points stored %s, quota %s; shorten its retention or raise --machine-quota",
		QuotaReason, e.Machine, api.FormatSize(e.Used), api.FormatSize(e.Quota))
}

func (e *QuotaError) Unwrap() []error { return []error{ErrQuota, protocol.ErrUnavailable} }

// storedBytes is what a machine's points stored: the bytes of the chunks
// each point's changes introduced (content shared with other machines is
// counted where it arrived first).
func storedBytes(pts []storage.Point) int64 {
	var n int64
	for _, p := range pts {
		n += p.Bytes
	}
	return n
}

// overQuota says whether points of a machine reach the per-machine quota.
func (s *Server) overQuota(pts []storage.Point) bool {
	return s.cfg.MachineQuota > 0 && storedBytes(pts) >= s.cfg.MachineQuota
}

// checkQuota refuses a new cycle of a machine at or over the quota. One
// cycle may pass it: the check is at the cycle's start.
func (s *Server) checkQuota(ctx context.Context, machine string) error {
	if s.cfg.MachineQuota <= 0 {
		return nil
	}
	pts, err := s.repo.Points(ctx, machine)
	if err != nil {
		return err
	}
	if used := storedBytes(pts); used >= s.cfg.MachineQuota {
		return &QuotaError{Machine: machine, Used: used, Quota: s.cfg.MachineQuota}
	}
	return nil
}
