package data

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// TestSummaryFramesRoundTripAndLimits: the summary resync's frames decode
// to what was encoded, and runs off a group boundary, of no groups or
// over the frame limit are refused.
func TestSummaryFramesRoundTripAndLimits(t *testing.T) {
	z := make([]bool, 2*GroupBlocks)
	p := make([]Print, 2*GroupBlocks)
	for i := range z {
		z[i] = i%2 == 0
		if !z[i] {
			p[i] = PrintOf(hashOf(byte(i)))
		}
	}
	s := SumRun{Disk: 3, Start: 5 * GroupBlocks, Zero: z, Prints: p}
	var got SumRun
	require.NoError(t, got.Decode(s.Append(nil)))
	require.Equal(t, s, got)

	v := VerifyRun{Disk: 3, Start: 5 * GroupBlocks, Groups: []GroupCheck{{Differ: 1 << 63, Digest: hashOf(1)}, {Digest: hashOf(2)}}}
	var gv VerifyRun
	require.NoError(t, gv.Decode(v.Append(nil)))
	require.Equal(t, v, gv)

	d := Verified{Disk: 3, Start: 5 * GroupBlocks, Mismatch: []bool{true, false}}
	var gd Verified
	require.NoError(t, gd.Decode(d.Append(nil)))
	require.Equal(t, d, gd)

	off := SumRun{Start: 1, Zero: z[:GroupBlocks], Prints: p[:GroupBlocks]}
	require.ErrorIs(t, off.Validate(), protocol.ErrInvalid)
	short := SumRun{Start: 0, Zero: z[:GroupBlocks-1], Prints: p[:GroupBlocks-1]}
	require.ErrorIs(t, short.Validate(), protocol.ErrInvalid)
	big := VerifyRun{Groups: make([]GroupCheck, MaxEntriesPerFrame/GroupBlocks+1)}
	var gb VerifyRun
	require.ErrorIs(t, gb.Decode(big.Append(nil)), protocol.ErrTooLarge)
	require.ErrorIs(t, (&Verified{}).Validate(), protocol.ErrInvalid)
}

// TestGroupDigestSeparatesEntries: the digest depends on each block's
// kind (zero, skipped, hash), its hash, the disk and the group's place.
func TestGroupDigestSeparatesEntries(t *testing.T) {
	sum := func(disk uint16, first uint64, add func(g *GroupDigest)) Hash {
		g := NewGroupDigest(disk, first)
		add(g)
		return g.Sum()
	}
	base := sum(0, 0, func(g *GroupDigest) { g.Zero(); g.Block(hashOf(1)) })
	require.Equal(t, base, sum(0, 0, func(g *GroupDigest) { g.Zero(); g.Block(hashOf(1)) }))
	for name, other := range map[string]Hash{
		"skip for zero": sum(0, 0, func(g *GroupDigest) { g.Skip(); g.Block(hashOf(1)) }),
		"another hash":  sum(0, 0, func(g *GroupDigest) { g.Zero(); g.Block(hashOf(2)) }),
		"another disk":  sum(1, 0, func(g *GroupDigest) { g.Zero(); g.Block(hashOf(1)) }),
		"another group": sum(0, GroupBlocks, func(g *GroupDigest) { g.Zero(); g.Block(hashOf(1)) }),
		"order swapped": sum(0, 0, func(g *GroupDigest) { g.Block(hashOf(1)); g.Zero() }),
		"a block fewer": sum(0, 0, func(g *GroupDigest) { g.Block(hashOf(1)) }),
	} {
		require.NotEqual(t, base, other, name)
	}
}
