package controller

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/storage"
)

// The background compactor (docs/storage-format.md "Compaction"): ingest
// stores what the controller builds as S2, which keeps a cycle's CPU low;
// this loop re-encodes the chunks that outlived the churn to zstd, a
// budget per tick, so storage stays small without slowing ingest.
const (
	// DefaultCompactRate re-encodes 16 MiB of plain data a second: about
	// 13 % of one core here for zstd at its default level, which
	// compaction uses (docs/storage-format.md "Compaction").
	DefaultCompactRate = 16 << 20
	compactTick        = 5 * time.Second
	// compactColderThan: chunks of packs younger than this are left; under
	// churn most are superseded and dropped by retention before then.
	compactColderThan = 10 * time.Minute
)

func (s *Server) compactLoop(ctx context.Context) {
	if s.cfg.CompactRate <= 0 || s.repo.Encrypted() {
		return // an encrypted repository stores zstd at ingest
	}
	t := time.NewTicker(compactTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		budget := s.cfg.CompactRate * int64(compactTick/time.Second)
		if _, err := s.repo.Compact(ctx, storage.CompactOptions{MaxBytes: budget, ColderThan: compactColderThan}); err != nil && ctx.Err() == nil {
			s.log.Warn("background compaction failed; it tries again at the next tick", "err", err)
		}
	}
}
