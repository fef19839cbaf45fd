package points

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ferrydr/ferry/storage"
)

// Specs with a fixed meaning. "latest" at failover means "a fresh cycle if
// the source is reachable" — the failover engine handles that; here it
// resolves like latest-processed.
const (
	SpecLatest              = "latest"
	SpecLatestProcessed     = "latest-processed"
	SpecLatestAppConsistent = "latest-app-consistent"
	// SpecLatestVerified is the newest point a drill verified (booted
	// and probed) that reads no damaged data.
	SpecLatestVerified = "latest-verified"
)

// ErrNoPoint means no point matches the spec.
var ErrNoPoint = errors.New("no recovery point matches")

// ErrBadSpec means the spec is not a known word, id or RFC 3339 time.
var ErrBadSpec = errors.New("invalid point spec")

// Lister is what resolution needs from the repository.
type Lister interface {
	Points(ctx context.Context, machine string) ([]storage.Point, error)
}

// Verifier says which of a machine's points a drill verified (the catalog).
type Verifier interface {
	VerifiedPoints(ctx context.Context, machine string) (map[int64]bool, error)
}

// Resolve finds the point a spec names among the machine's points; v
// answers latest-verified (nil: that spec finds nothing).
func Resolve(ctx context.Context, repo Lister, v Verifier, machine, spec string) (storage.Point, error) {
	pts, err := repo.Points(ctx, machine)
	if err != nil {
		return storage.Point{}, err
	}
	return PickIn(ctx, v, pts, spec, machine)
}

// PickIn is Pick with the machine's verified points asked of v when the
// spec is latest-verified.
func PickIn(ctx context.Context, v Verifier, pts []storage.Point, spec, machine string) (storage.Point, error) {
	if spec != SpecLatestVerified {
		return Pick(pts, spec, machine)
	}
	verified := map[int64]bool{}
	if v != nil {
		var err error
		if verified, err = v.VerifiedPoints(ctx, machine); err != nil {
			return storage.Point{}, err
		}
	}
	return PickVerified(pts, verified, machine)
}

// PickVerified is the newest point among pts in verified that reads no
// damaged data.
func PickVerified(pts []storage.Point, verified map[int64]bool, machine string) (storage.Point, error) {
	for i := len(pts) - 1; i >= 0; i-- {
		if verified[pts[i].ID] && !pts[i].Damaged {
			return pts[i], nil
		}
	}
	return storage.Point{}, fmt.Errorf("%w: machine %s has no verified point (a point is verified when a drill passed on it: ferry drills)", ErrNoPoint, machine)
}

// CheckSpec reports whether a spec is well formed ("" is latest), before
// anything is resolved: a word, a point id or an RFC 3339 time.
func CheckSpec(spec string) error {
	switch spec {
	case "", SpecLatest, SpecLatestProcessed, SpecLatestAppConsistent, SpecLatestVerified:
		return nil
	}
	if _, err := strconv.ParseInt(spec, 10, 64); err == nil {
		return nil
	}
	if _, err := time.Parse(time.RFC3339Nano, spec); err != nil {
		return fmt.Errorf("%w %q: want latest, latest-processed, latest-app-consistent, latest-verified, a point id or an RFC 3339 time", ErrBadSpec, spec)
	}
	return nil
}

// Pick resolves a spec against points sorted by id (oldest first).
func Pick(pts []storage.Point, spec, machine string) (storage.Point, error) {
	if spec == "" {
		spec = SpecLatest
	}
	switch spec {
	case SpecLatest, SpecLatestProcessed:
		// A point that reads damaged data is never "latest": an id names
		// it when that is really wanted.
		for i := len(pts) - 1; i >= 0; i-- {
			if !pts[i].Damaged {
				return pts[i], nil
			}
		}
		if len(pts) == 0 {
			return storage.Point{}, fmt.Errorf("%w: machine %s has no recovery point yet", ErrNoPoint, machine)
		}
		return storage.Point{}, fmt.Errorf("%w: every point of machine %s reads damaged data (ferry verify)", ErrNoPoint, machine)
	case SpecLatestAppConsistent:
		for i := len(pts) - 1; i >= 0; i-- {
			if pts[i].Consistency == storage.AppConsistent && !pts[i].Damaged {
				return pts[i], nil
			}
		}
		return storage.Point{}, fmt.Errorf("%w: machine %s has no app-consistent point", ErrNoPoint, machine)
	case SpecLatestVerified:
		return PickVerified(pts, nil, machine) // PickIn knows the verified points
	}
	if id, err := strconv.ParseInt(spec, 10, 64); err == nil {
		for _, p := range pts {
			if p.ID == id {
				return p, nil
			}
		}
		return storage.Point{}, fmt.Errorf("%w: machine %s has no point %d", ErrNoPoint, machine, id)
	}
	t, err := time.Parse(time.RFC3339Nano, spec)
	if err != nil {
		return storage.Point{}, fmt.Errorf("%w %q: want latest, latest-processed, latest-app-consistent, latest-verified, a point id or an RFC 3339 time", ErrBadSpec, spec)
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if !pts[i].Instant.After(t) {
			return pts[i], nil
		}
	}
	return storage.Point{}, fmt.Errorf("%w: machine %s has no point at or before %s", ErrNoPoint, machine, t.Format(time.RFC3339))
}

// Health levels.
const (
	Healthy  = "healthy"
	Warning  = "warning"
	Degraded = "degraded" // some points read damaged data: between warning and critical
	Critical = "critical"
)

// HealthInput is what a machine's health is judged on.
type HealthInput struct {
	Now         time.Time
	LastPoint   *time.Time // instant of the newest point
	Protected   time.Time  // when protection started
	Threshold   time.Duration
	Connected   bool   // the source agent has a session
	ReplError   string // the agent's last replication error, if any
	ClockSkew   time.Duration
	Replicating bool // false when the machine is not replicating (failed over…)
	// NotReplicating says why, when Replicating is false (its state and
	// what brings replication back).
	NotReplicating string
	// DiskFull: the controller's disk is below its reserve, ingest paused.
	DiskFull bool
	// OverQuota: the machine's points reached the per-machine quota.
	OverQuota bool
	// DamagedPoints counts points that read data found damaged.
	DamagedPoints int
	// DamageDetail names the damaged points' disks and blocks (the point
	// audit's findings), appended to the reason.
	DamageDetail string
	// DrillFailure is why the machine's newest drill failed ("" if it
	// passed or none ran): its points are not proven to boot.
	DrillFailure string
}

// MaxSkew is the agent clock offset past which a machine gets a warning.
const MaxSkew = 2 * time.Second

// Health judges RPO against the threshold: critical past it (the policy's
// threshold is the RPO the operator promised; past it the promise is
// broken, which is what pages someone); before the first point, the
// initial sync is judged the same way from the moment protection began. It returns the RPO in seconds (nil
// before the first point), the level and why.
func Health(in HealthInput) (rpo *float64, level, reason string) {
	if in.LastPoint != nil {
		s := in.Now.Sub(*in.LastPoint).Seconds()
		rpo = &s
	}
	damaged := ""
	if in.DamagedPoints > 0 {
		damaged = fmt.Sprintf("%d point(s) read data found damaged (point audit or ferry verify): left out of latest*, stored again by the next cycles where the source still has it", in.DamagedPoints)
		if in.DamageDetail != "" {
			damaged += " (" + in.DamageDetail + ")"
		}
	}
	if in.DrillFailure != "" {
		if damaged == "" {
			damaged = in.DrillFailure
		} else {
			damaged += "; " + in.DrillFailure
		}
	}
	if !in.Replicating {
		// No new point arrives: whatever the RPO, the machine is not
		// protected the way a healthy one is (a failed-over machine runs
		// at its recovery site with nothing replicating it).
		reason = "not replicating"
		if in.NotReplicating != "" {
			reason += ": " + in.NotReplicating
		}
		if in.LastPoint != nil {
			reason += fmt.Sprintf("; newest point %s old", in.Now.Sub(*in.LastPoint).Round(time.Second))
		}
		if damaged != "" {
			return rpo, Degraded, reason + "; " + damaged
		}
		return rpo, Warning, reason
	}
	age := in.Now.Sub(in.Protected)
	what := "initial sync in progress"
	if in.LastPoint != nil {
		age = in.Now.Sub(*in.LastPoint)
		what = fmt.Sprintf("RPO %s", age.Round(time.Second))
	}
	level = Healthy
	if age > in.Threshold {
		level, reason = Critical, fmt.Sprintf("%s exceeds the threshold %s", what, in.Threshold)
	}
	extra := func(r string) {
		if level == Healthy {
			level = Warning
		}
		if reason == "" {
			reason = r
		} else {
			reason += "; " + r
		}
	}
	if in.DiskFull {
		extra("controller disk nearly full") // controller.DiskFullReason
	}
	if in.OverQuota {
		extra("machine over its storage quota") // controller.QuotaReason
	}
	if !in.Connected {
		extra("source agent not connected")
	}
	if in.ReplError != "" {
		extra("replication error: " + in.ReplError)
	}
	if in.ClockSkew > MaxSkew || in.ClockSkew < -MaxSkew {
		extra(fmt.Sprintf("agent clock is off by %s", in.ClockSkew.Round(time.Millisecond)))
	}
	if damaged != "" {
		if level != Critical {
			level = Degraded
		}
		if reason == "" {
			reason = damaged
		} else {
			reason += "; " + damaged
		}
	}
	return rpo, level, reason
}

// Pruner is what retention needs.
type Pruner interface {
	PruneExcept(ctx context.Context, machine string, olderThan time.Time, keep int64) (int, error)
}

// ApplyRetention drops points older than the retention window, never the
// newest, nor keep (the newest verified point, 0 for none): the one point
// proven to boot outlives the window. A zero retention keeps everything.
func ApplyRetention(ctx context.Context, repo Pruner, machine string, retention time.Duration, now time.Time, keep int64) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	return repo.PruneExcept(ctx, machine, now.Add(-retention), keep)
}

// NewestVerified is the id of the newest point in pts a drill verified (0: none).
func NewestVerified(pts []storage.Point, verified map[int64]bool) int64 {
	for i := len(pts) - 1; i >= 0; i-- {
		if verified[pts[i].ID] {
			return pts[i].ID
		}
	}
	return 0
}
