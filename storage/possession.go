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
// work for a hash that is not stored (a probe of an empty range) so the
// answer's latency says little about which of the two it was. A chunk
// marked damaged is possessed by nobody: it must be sent again.
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
	// chunk id -1 matches nothing: a hash that is not stored still probes
	// the changes index once per disk.
	q := `SELECT EXISTS (SELECT 1 FROM changes
		WHERE chunk_id = coalesce((SELECT id FROM chunks WHERE hash = ?
			AND id NOT IN (SELECT chunk_id FROM damaged_chunks)), -1)
		AND disk_id IN (` + placeholders(len(disks)) + `))`
	st, err := conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	args := make([]any, 1+len(disks))
	for i, d := range disks {
		args[1+i] = d
	}
	seen := make(map[Hash]bool, len(hashes))
	for i, h := range hashes {
		if v, ok := seen[h]; ok {
			out[i] = v
			continue
		}
		args[0] = h[:]
		var has bool
		if err := st.QueryRowContext(ctx, args...).Scan(&has); err != nil {
			return nil, err
		}
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
