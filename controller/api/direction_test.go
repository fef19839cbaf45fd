package api

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReverseFailover(t *testing.T) {
	fb, ok, err := ReverseFailover(FailoverRequest{Machine: "vm", Direction: "reverse", Point: "7", Key: []byte("k"), AllowDamaged: true})
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, MachineActionRequest{Machine: "vm", Point: "7", Key: []byte("k"), AllowDamaged: true, Unplanned: true}, fb)

	for _, d := range []string{"", "forward"} {
		_, ok, err := ReverseFailover(FailoverRequest{Machine: "vm", Direction: d, Test: true})
		require.NoError(t, err)
		require.False(t, ok, "direction %q is a failover", d)
	}
	_, _, err = ReverseFailover(FailoverRequest{Machine: "vm", Direction: "back"})
	require.ErrorContains(t, err, `--direction "back": it is forward`)
	_, _, err = ReverseFailover(FailoverRequest{Machine: "vm", Direction: "reverse", Planned: true, Target: "t"})
	require.ErrorContains(t, err, "--planned, --target cannot be given")
}
