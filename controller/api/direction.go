package api

import (
	"fmt"
	"strings"
)

// Failover directions (`ferry failover --direction`).
const (
	DirectionForward = "forward"
	DirectionReverse = "reverse"
)

// ReverseFailover is `ferry failover --direction reverse`: exactly the
// unplanned failback (`ferry failback --unplanned`, to --point when given),
// the same request and job kind. It refuses an unknown direction and the
// failover flags a failback does not have; ok is false for a forward
// failover (the request is then a failover's).
func ReverseFailover(req FailoverRequest) (fb MachineActionRequest, ok bool, err error) {
	switch req.Direction {
	case "", DirectionForward:
		return MachineActionRequest{}, false, nil
	case DirectionReverse:
	default:
		return MachineActionRequest{}, false, fmt.Errorf("--direction %q: it is forward (home to the recovery site, the default) or reverse (an unplanned failback, like 'ferry failback --unplanned')", req.Direction)
	}
	var bad []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{req.Test, "--test"}, {req.Planned, "--planned"}, {req.ShutdownSource, "--shutdown-source"},
		{req.Target != "", "--target"}, {req.AllowInconsistent, "--allow-inconsistent"},
		{req.DryRun, "--dry-run"}, {req.Timeout != 0, "--timeout"},
	} {
		if f.set {
			bad = append(bad, f.name)
		}
	}
	if len(bad) > 0 {
		return MachineActionRequest{}, false, fmt.Errorf("--direction reverse is an unplanned failback ('ferry failback --unplanned'): %s cannot be given with it (a planned failback is 'ferry failback', a test one 'ferry failback --test')", strings.Join(bad, ", "))
	}
	return MachineActionRequest{
		Machine: req.Machine, Plan: req.Plan, Point: req.Point, Key: req.Key,
		AllowDamaged: req.AllowDamaged, Unplanned: true,
	}, true, nil
}
