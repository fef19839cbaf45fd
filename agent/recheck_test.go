package agent

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/ship"
)

// TestWithRechecksMerges: blocks to recheck join the candidates in
// ascending order, and a candidate that is also rechecked loses its ranges
// (it travels whole) but keeps Hole.
func TestWithRechecksMerges(t *testing.T) {
	cands := slices.Values([]ship.Candidate{
		{Block: 2, Ranges: []ship.Range{{Offset: 0, Length: 8}}},
		{Block: 5, Ranges: []ship.Range{{Offset: 8, Length: 8}}},
		{Block: 7, Hole: true},
	})
	got := slices.Collect(withRechecks(cands, []int64{1, 5, 7, 9}))
	want := []ship.Candidate{
		{Block: 1},
		{Block: 2, Ranges: []ship.Range{{Offset: 0, Length: 8}}},
		{Block: 5},
		{Block: 7, Hole: true},
		{Block: 9},
	}
	require.Equal(t, want, got)
	require.Equal(t, []ship.Candidate{{Block: 3}}, slices.Collect(withRechecks(slices.Values([]ship.Candidate(nil)), []int64{3})))
}
