package controller

import (
	"context"
	"errors"
	"io"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/storage"
)

// ExportDisk streams a disk of a point: only blocks holding data travel.
func (s *Server) ExportDisk(ctx context.Context, machine string, pointID int64, disk string, key []byte, w io.Writer) error {
	repo, err := s.reader(key)
	if err != nil {
		return err
	}
	p, err := repo.Point(ctx, pointID)
	if err != nil || p.Machine != machine {
		return api.Errorf(api.CodeNotFound, "machine %s has no point %d", machine, pointID)
	}
	d, err := repo.OpenDisk(ctx, pointID, disk)
	if err != nil {
		return api.Errorf(api.CodeNotFound, "point %d has no disk %s: %v", pointID, disk, err)
	}
	sw := admin.NewSparseWriter(w)
	bs := int64(d.BlockSize())
	err = d.Blocks(ctx, func(block int64, _ storage.Hash, zero bool) error {
		if zero {
			return nil
		}
		b, err := d.ReadBlock(ctx, block)
		if err != nil {
			return err
		}
		off := block * bs
		if end := off + int64(len(b)); end > d.Size() {
			b = b[:max(0, d.Size()-off)]
		}
		_, err = sw.WriteAt(b, off)
		return err
	})
	if err != nil {
		return err
	}
	return sw.Close(d.Size())
}

// Verify re-reads and re-hashes stored data.
func (s *Server) Verify(ctx context.Context, machine string) (api.VerifyReport, error) {
	r, err := s.repo.Verify(ctx, storage.VerifyOptions{Machine: machine, ReadData: true})
	if err != nil {
		return api.VerifyReport{}, err
	}
	if err := s.damageFound(ctx, r); err != nil {
		return api.VerifyReport{}, err
	}
	out := api.VerifyReport{Chunks: r.Chunks, Bytes: r.Bytes, Damaged: []api.DamagedChunk{}}
	for _, d := range r.Damaged {
		dc := api.DamagedChunk{Hash: d.Hash.String(), Pack: d.Pack, Affected: []api.AffectedBlock{}}
		if d.Err != nil {
			dc.Error = d.Err.Error()
		}
		for _, a := range d.Affected {
			dc.Affected = append(dc.Affected, api.AffectedBlock{Machine: a.Machine, PointID: a.PointID, Disk: a.Disk, Blocks: a.Blocks})
		}
		out.Damaged = append(out.Damaged, dc)
	}
	return out, nil
}

// GC drops unreferenced data, online.
func (s *Server) GC(ctx context.Context) (api.GCReport, error) {
	r, err := s.repo.GC(ctx, storage.GCOptions{})
	if err != nil {
		return api.GCReport{}, err
	}
	return api.GCReport{ChunksDeleted: r.ChunksDeleted, PacksDeleted: r.PacksDeleted, PacksRepacked: r.PacksRepacked, BytesFreed: r.BytesFreed,
		ChunksRecoded: r.ChunksRecoded, BytesRecoded: r.BytesRecoded, RecodeSaved: r.RecodeSaved}, nil
}

// damageFound acts on what a verify or a point-audit pass found: the
// damaged chunks are marked in the repository (no cycle deduplicates
// against them any more, the points that read them are shown damaged and
// left out of latest*), and every
// affected machine's next cycle compares all its blocks with the
// controller's hashes, which leave the damaged chunks out, so the agent
// sends that content again and the repository stores it anew.
func (s *Server) damageFound(ctx context.Context, r storage.VerifyReport) error {
	var hashes []storage.Hash
	var missing []int64
	machines := map[string]bool{}
	for _, d := range r.Damaged {
		if d.Hash != (storage.Hash{}) {
			hashes = append(hashes, d.Hash)
		}
		if d.ChunkID != 0 {
			missing = append(missing, d.ChunkID)
		}
		for _, a := range d.Affected {
			machines[a.Machine] = true
		}
	}
	n, err := s.repo.MarkDamaged(ctx, hashes, "verify")
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Warn("damaged chunks marked: they will be stored again", "chunks", n, "machines", len(machines))
	}
	// Chunks rows name but the index lacks (an incomplete index): their
	// points are damaged for good, their content unknown.
	if n, err = s.repo.MarkMissing(ctx, missing, "verify"); err != nil {
		return err
	}
	if n > 0 {
		s.log.Warn("chunks missing from the index marked: the points reading them are damaged", "chunks", n)
	}
	for name := range machines {
		m, err := s.cat.Machine(ctx, name)
		if errors.Is(err, catalog.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if !m.Resync {
			m.Resync = true
			if err := s.cat.UpdateMachine(ctx, m); err != nil {
				return err
			}
		}
	}
	return nil
}
