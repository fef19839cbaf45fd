package controller

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBudgetLimitsGlobalAndPerAddress: a budget of 8 admits 2 per source
// address (a quarter) and 8 in all; resizing past a limit is refused and
// leaves the charge; a release frees the place for anyone.
func TestBudgetLimitsGlobalAndPerAddress(t *testing.T) {
	b := newBudget(8)
	addr := func(i byte) net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, i), Port: 1000 + int(i)} }
	var held []*charge
	for i := byte(1); i <= 4; i++ {
		for range 2 {
			c, ok := b.admit(addr(i), 1)
			require.True(t, ok)
			held = append(held, c)
		}
		_, ok := b.admit(&net.TCPAddr{IP: net.IPv4(10, 0, 0, i), Port: 9}, 1)
		require.False(t, ok, "a third from one address (another port) is over its quarter")
	}
	_, ok := b.admit(addr(5), 1)
	require.False(t, ok, "the global budget is spent")

	held[0].release()
	held[0].release() // twice is harmless
	require.False(t, held[1].resize(3), "over the address's quarter")
	require.True(t, held[1].resize(2))
	_, ok = b.admit(addr(5), 1)
	require.False(t, ok, "resize took the freed unit")
	held[1].release()
	c, ok := b.admit(addr(5), 1)
	require.True(t, ok)
	c.release()
	for _, h := range held {
		h.release()
	}
	require.Zero(t, b.used)
	require.Empty(t, b.byAddr)
}
