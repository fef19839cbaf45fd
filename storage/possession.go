package storage

import (
	"context"
	"database/sql"
	"errors"
	"strings"
)

// HasChunksOf reports, for each hash, whether a chunk with that content is
// stored AND referenced by a row of one of the owners' disks: a block of
// one of their points, pending included, or of their newest state (a
// deleted point's row stays while later points read it). Owners are
// machine names, opaque to storage; DeleteMachine ends a machine's
// possession at once (its disks are forgotten, a machine protected again
// under the name starts with none). A chunk that is stored but referenced only by other
// machines answers false, exactly like a chunk that is not stored: the
// caller asks for the content instead of deduplicating against it, so
// knowing a hash never grants its bytes (docs/security.md).
//
// The check runs on the changes_chunk index (chunk_id, then the primary key
// disk_id, block, seq): one seek per hash and owner disk. It does the same
// work for a hash that is not stored, so the answer's latency says little
// about which of the two it was (see the query). A chunk marked damaged is
// possessed by nobody: it must be sent again.
func (r *Repo) HasChunksOf(ctx context.Context, owners []string, hashes []Hash) ([]bool, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	out := make([]bool, len(hashes))
	if len(hashes) == 0 || len(owners) == 0 {
		return out, nil
	}
	conn, err := r.c.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	disks, err := ownerDisks(ctx, conn, owners)
	if err != nil {
		return nil, err
	}
	if len(disks) == 0 {
		return out, nil
	}
	// The changes index is probed for every hash: for a stored chunk at its
	// id, for a hash that is not stored at a random chunk's id (whose
	// answer is then ignored), so both cost one seek into a cold part of
	// the index and the answer's latency says little about which it was.
	//
	// A chunk of the index's recent level (recent.go) comes with its id
	// (the first ?), and a row of the level may name it: both are looked
	// up in memory first, and the changes index is probed all the same.
	q := `SELECT c.cid IS NOT NULL, EXISTS (SELECT 1 FROM changes
		WHERE chunk_id = coalesce(c.cid, abs(random() % ?) + 1)
		AND disk_id IN (` + placeholders(len(disks)) + `)), c.cid
		FROM (SELECT coalesce(?, (SELECT id FROM chunks WHERE hash = ? AND id NOT IN (SELECT chunk_id FROM damaged_chunks))) AS cid) c`
	st, err := conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var maxID int64
	if err := conn.QueryRowContext(ctx, `SELECT coalesce(max(id), 1) FROM chunks`).Scan(&maxID); err != nil {
		return nil, err
	}
	args := make([]any, len(disks)+3)
	args[0] = maxID
	for i, d := range disks {
		args[1+i] = d
	}
	seen := make(map[Hash]bool, len(hashes))
	for i, h := range hashes {
		if v, ok := seen[h]; ok {
			out[i] = v
			continue
		}
		var cid *int64
		if row, ok := r.c.recent.chunkOf(h); ok {
			cid = &row.id
		}
		args[len(disks)+1], args[len(disks)+2] = cid, h[:]
		var stored, referenced bool
		var id sql.NullInt64
		if err := st.QueryRowContext(ctx, args...).Scan(&stored, &referenced, &id); err != nil {
			return nil, err
		}
		if stored && !referenced {
			// After the probe: a fold in between can only make this
			// answer false for a chunk the machine has, which costs the
			// agent a send, never a reference to content it lacks.
			referenced = r.c.recent.owned(id.Int64, disks)
		}
		has := stored && referenced
		seen[h], out[i] = has, has
	}
	return out, nil
}

// ownerDisks lists the disk ids of machines.
func ownerDisks(ctx context.Context, conn *sql.Conn, machines []string) ([]int64, error) {
	args := make([]any, len(machines))
	for i, m := range machines {
		args[i] = m
	}
	rows, err := conn.QueryContext(ctx, `SELECT id FROM disks WHERE machine IN (`+placeholders(len(machines))+`) ORDER BY id`, args...)
	ids, err := column[int64](rows, err)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return ids, err
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}
