package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrLocked means a machine is held by another job.
var ErrLocked = errors.New("machine is held by another job")

// BusyError refuses a mutating request on a machine another job holds:
// it names the machine, the job, its kind and state, and what to do. It
// matches ErrLocked with errors.Is.
type BusyError struct {
	Machine, Job, Kind, State string
}

func (e *BusyError) Error() string {
	what := ""
	switch {
	case e.Kind != "" && e.State != "":
		what = fmt.Sprintf(" (%s, %s)", e.Kind, e.State)
	case e.Kind != "":
		what = fmt.Sprintf(" (%s)", e.Kind)
	}
	return fmt.Sprintf("machine %s is busy with job %s%s: wait for it (ferry jobs watch %s) or cancel it (ferry cancel %s --force)",
		e.Machine, e.Job, what, e.Job, e.Job)
}

// Is makes a BusyError match ErrLocked.
func (e *BusyError) Is(target error) bool { return target == ErrLocked }

// Busy returns the BusyError for a machine held by job, with the job's
// kind and state when the job is recorded.
func (c *Catalog) Busy(ctx context.Context, machine, job string) *BusyError {
	return busy(ctx, c.db, machine, job)
}

// busy is Busy through q (the catalog, or a transaction holding the lock).
func busy(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, machine, job string) *BusyError {
	e := &BusyError{Machine: machine, Job: job}
	_ = q.QueryRowContext(ctx, `SELECT kind, state FROM jobs WHERE id = ?`, job).Scan(&e.Kind, &e.State)
	return e
}

// JobRow is a persisted job: the engine owns the JSON.
type JobRow struct {
	ID      string
	Kind    string
	State   string
	Data    string
	Created time.Time
	Updated time.Time
}

// PutJob inserts or replaces a job.
func (c *Catalog) PutJob(ctx context.Context, j JobRow) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO jobs (id, kind, state, data, created_ns, updated_ns) VALUES (?,?,?,?,?,?)
		ON CONFLICT(id) DO UPDATE SET state = excluded.state, data = excluded.data, updated_ns = excluded.updated_ns`,
		j.ID, j.Kind, j.State, j.Data, ns(j.Created), ns(j.Updated))
	return err
}

// Job reads one job.
func (c *Catalog) Job(ctx context.Context, id string) (JobRow, error) {
	var j JobRow
	var created, updated int64
	err := c.db.QueryRowContext(ctx, `SELECT id, kind, state, data, created_ns, updated_ns FROM jobs WHERE id = ?`, id).
		Scan(&j.ID, &j.Kind, &j.State, &j.Data, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return j, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	j.Created, j.Updated = fromNS(created), fromNS(updated)
	return j, err
}

// Jobs lists jobs, newest first; states filters when given.
func (c *Catalog) Jobs(ctx context.Context, states ...string) ([]JobRow, error) {
	q := `SELECT id, kind, state, data, created_ns, updated_ns FROM jobs`
	var args []any
	if len(states) > 0 {
		q += ` WHERE state IN (?` + strings.Repeat(",?", len(states)-1) + `)`
		for _, s := range states {
			args = append(args, s)
		}
	}
	rows, err := c.db.QueryContext(ctx, q+` ORDER BY created_ns DESC`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []JobRow
	for rows.Next() {
		var j JobRow
		var created, updated int64
		if err := rows.Scan(&j.ID, &j.Kind, &j.State, &j.Data, &created, &updated); err != nil {
			return nil, err
		}
		j.Created, j.Updated = fromNS(created), fromNS(updated)
		out = append(out, j)
	}
	return out, rows.Err()
}

// LockMachines gives every machine to jobID, atomically; if one is held
// by another job it returns a *BusyError (ErrLocked) naming that job.
func (c *Catalog) LockMachines(ctx context.Context, jobID string, machines []string) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		for _, m := range machines {
			var holder string
			err := tx.QueryRowContext(ctx, `SELECT job_id FROM job_locks WHERE machine = ?`, m).Scan(&holder)
			if err == nil && holder != jobID {
				return busy(ctx, tx, m, holder)
			}
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO job_locks (machine, job_id) VALUES (?, ?)`, m, jobID); err != nil {
				return err
			}
		}
		return nil
	})
}

// UnlockMachines releases every machine held by jobID.
func (c *Catalog) UnlockMachines(ctx context.Context, jobID string) error {
	_, err := c.db.ExecContext(ctx, `DELETE FROM job_locks WHERE job_id = ?`, jobID)
	return err
}

// MachineJob returns the job holding a machine, or "".
func (c *Catalog) MachineJob(ctx context.Context, machine string) (string, error) {
	var id string
	err := c.db.QueryRowContext(ctx, `SELECT job_id FROM job_locks WHERE machine = ?`, machine).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}
