package failover

import (
	"strings"
	"testing"

	"github.com/ferrydr/ferry/storage"
)

// TestInconsistentWayOut: the refusal of an inconsistent point names the
// newest consistent point that reads no damaged data, when there is one,
// and --allow-inconsistent either way.
func TestInconsistentWayOut(t *testing.T) {
	pt := func(id int64, c storage.Consistency, damaged bool) storage.Point {
		return storage.Point{ID: id, Consistency: c, Damaged: damaged}
	}
	for _, tc := range []struct {
		pts  []storage.Point
		want string
	}{
		{[]storage.Point{pt(1, storage.CrashConsistent, false), pt(2, storage.AppConsistent, false), pt(3, storage.Inconsistent, false)},
			"give --point 2 (the newest app-consistent point)"},
		{[]storage.Point{pt(1, storage.CrashConsistent, false), pt(2, storage.CrashConsistent, true), pt(3, storage.Inconsistent, false)},
			"give --point 1 (the newest crash-consistent point)"},
		{[]storage.Point{pt(1, storage.Inconsistent, false), pt(2, storage.Inconsistent, false)},
			"no point of this machine is consistent"},
		{nil, "no point of this machine is consistent"},
	} {
		got := inconsistentWayOut(tc.pts)
		if !strings.Contains(got, tc.want) || !strings.Contains(got, "--allow-inconsistent") || !strings.Contains(got, "fix the cause") {
			t.Errorf("%v: %q, want it to say %q, fix the cause and --allow-inconsistent", tc.pts, got, tc.want)
		}
	}
}
