package apply

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol/msg"
)

// TestResetMoveOfAHomeSetWritesOnlyWhatDiffers: a move "from nothing"
// (RestoreHeader.Reset: the controller no longer has the set's point, so
// it sends every non-zero block of the new one) into a raw home disk. The
// home disk ends as the point, and only the blocks that differed are
// written: the ones the stream names with the content they hold already
// are left alone, the ones it does not name that hold data are zeroed,
// and the rest (holes) are not touched. It used to zero the whole disk
// first and write every block again: a full rewrite of the home disk.
func TestResetMoveOfAHomeSetWritesOnlyWhatDiffers(t *testing.T) {
	f := newHomeFixture(t, "raw", 23) // blocks 0..31 data, 32..47 a hole, 48..63 data
	s := newTestSite(t)
	defer s.Close()
	ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
	_, err := s.Adopt(context.Background(), ref, []msg.TargetDisk{f.disk}, []string{f.img})
	require.NoError(t, err)

	im := newImage(f.disk)
	copy(im.data[0], f.orig)
	rng := rand.New(rand.NewPCG(23, 3))
	for _, b := range []int{2, 3, 40} { // changed, and data into the hole
		for i := b * undoBS; i < (b+1)*undoBS; i++ {
			im.data[0][i] = byte(rng.Uint32())
		}
	}
	clear(im.data[0][20*undoBS : 22*undoBS]) // data at home, zeros at the point
	var refs []blockRef
	for b := range im.nblocks(0) {
		if !allZero(im.block(0, b)) {
			refs = append(refs, blockRef{0, b})
		}
	}
	h := header(f.dir, "m", SetHome, 0, 7, im)
	h.Force, h.Reset = true, true
	ack, sv, err := restoreTCP(t, s, h, im.encode(t, refs))
	require.NoError(t, err)
	require.NoError(t, sv.err)
	require.Equal(t, uint64(7), ack.Cycle)
	require.True(t, bytes.Equal(im.data[0], f.guest(t)), "the home disk holds the point")
	require.Equal(t, int64(3*undoBS), sv.res.Bytes,
		"only the three blocks whose content changed are written (%d blocks named by the stream)", len(refs))
	st, err := ReadState(f.setDir())
	require.NoError(t, err)
	require.Equal(t, int64(7), st.Point)
	require.Zero(t, st.MovingTo)
}
