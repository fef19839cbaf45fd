package apply

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// staged makes machine m's staged set hold im at point.
func staged(t *testing.T, site *Site, dir, m string, point int64, im *image) {
	t.Helper()
	h := header(dir, m, SetStaged, 0, point, im)
	h.Create = true
	_, s, err := restoreTCP(t, site, h, im.encode(t, im.all()))
	require.NoError(t, err)
	require.NoError(t, s.err)
}

func TestStatusListsSets(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	ctx := t.Context()
	sets, err := site.Status(ctx, dir, "none")
	require.NoError(t, err)
	require.Empty(t, sets, "a machine without a directory has no sets")

	im := twoDisks()
	mixed(rand.New(rand.NewPCG(1, 3)), im)
	staged(t, site, dir, "m", 3, im)
	_, err = site.Clone(ctx, dir, "m", "test-9")
	require.NoError(t, err)
	// Leftovers that are not sets are ignored.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "m", ".tmp-leftover"), 0o700))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "m", "stray"), 0o700))

	sets, err = site.Status(ctx, dir, "m")
	require.NoError(t, err)
	require.Len(t, sets, 2)
	for _, name := range []string{SetStaged, "test-9"} {
		st := sets[name]
		require.Equal(t, int64(3), st.Point, name)
		require.Len(t, st.Disks, 2)
		require.Equal(t, DiskPath(filepath.Join(dir, "m", name), "sda"), st.Disks[0].Path)
	}

	_, err = site.Status(ctx, "relative", "m")
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = site.Status(ctx, dir, "../m")
	require.ErrorIs(t, err, protocol.ErrInvalid)
}

func TestPromoteAndDemoteAreIdempotent(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	ctx := t.Context()
	require.ErrorIs(t, site.Promote(ctx, dir, "m"), protocol.ErrNotFound)

	im := twoDisks()
	mixed(rand.New(rand.NewPCG(2, 3)), im)
	staged(t, site, dir, "m", 4, im)
	require.NoError(t, site.Promote(ctx, dir, "m"))
	require.NoError(t, site.Promote(ctx, dir, "m"), "a second promote has nothing to do")
	sets, err := site.Status(ctx, dir, "m")
	require.NoError(t, err)
	require.Equal(t, []string{SetLive}, keys(sets))
	requireContent(t, setPath(dir, "m", SetLive), im)

	require.NoError(t, site.Demote(ctx, dir, "m"))
	require.NoError(t, site.Demote(ctx, dir, "m"))
	sets, err = site.Status(ctx, dir, "m")
	require.NoError(t, err)
	require.Equal(t, []string{SetStaged}, keys(sets))

	// Both present: refused, nothing moved.
	require.NoError(t, site.Promote(ctx, dir, "m"))
	staged(t, site, dir, "m", 5, im)
	err = site.Promote(ctx, dir, "m")
	require.ErrorIs(t, err, protocol.ErrExists)
	require.ErrorContains(t, err, "both staged and live exist")
}

func keys(m map[string]msg.DiskSetState) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestCloneCopiesSparselyWhereReflinkIsMissing(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	ctx := t.Context()
	im := twoDisks()
	mixed(rand.New(rand.NewPCG(3, 3)), im)
	staged(t, site, dir, "m", 2, im)

	resp, err := site.Clone(ctx, dir, "m", "test-1")
	require.NoError(t, err)
	testDir := setPath(dir, "m", "test-1")
	requireContent(t, testDir, im)
	st, err := ReadState(testDir)
	require.NoError(t, err)
	require.Equal(t, msg.DiskSetState{Point: 2, Disks: im.disks}, st)
	if !resp.Reflinked {
		// The copy wrote no more than the non-zero data and left holes.
		var nonzero int64
		for d := range im.disks {
			for _, c := range im.data[d] {
				if c != 0 {
					nonzero++
				}
			}
		}
		require.GreaterOrEqual(t, resp.Bytes, nonzero)
		require.LessOrEqual(t, resp.Bytes, int64(len(im.data[0])+len(im.data[1])))
		if sparseChecks {
			src := allocated(t, DiskPath(setPath(dir, "m", SetStaged), "sda"))
			dst := allocated(t, DiskPath(testDir, "sda"))
			require.LessOrEqual(t, dst, src+64<<10, "the copy is as sparse as the source")
		}
	}
	t.Logf("clone: reflinked=%v bytes=%d", resp.Reflinked, resp.Bytes)

	// The clone is independent of the staged set.
	writeAt(t, DiskPath(testDir, "sda"), []byte("test machine writes"), 0)
	requireContent(t, setPath(dir, "m", SetStaged), im)

	_, err = site.Clone(ctx, dir, "m", "test-1")
	require.ErrorIs(t, err, protocol.ErrExists)
	_, err = site.Clone(ctx, dir, "m", SetLive)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = site.Clone(ctx, dir, "other", "test-1")
	require.ErrorIs(t, err, protocol.ErrNotFound)
}

func TestCloneRefusesASetBetweenPoints(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	im := twoDisks()
	staged(t, site, dir, "m", 2, im)
	d, err := OpenDiskSet(setPath(dir, "m", SetStaged), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, d.BeginMove(3, im.disks))
	require.NoError(t, d.Close())
	_, err = site.Clone(t.Context(), dir, "m", "test-1")
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	require.ErrorContains(t, err, "between points 2 and 3")
	require.NoDirExists(t, setPath(dir, "m", "test-1"))
}

func TestRemoveIsIdempotentAndSweepsLeftovers(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	ctx := t.Context()
	im := twoDisks()
	staged(t, site, dir, "m", 1, im)
	_, err := site.Clone(ctx, dir, "m", "test-a")
	require.NoError(t, err)
	// What a crash in the middle of a clone would leave.
	leftover := filepath.Join(dir, "m", ".test-b.clone-123")
	require.NoError(t, os.MkdirAll(leftover, 0o700))

	ref := msg.TargetRef{Dir: dir, Machine: "m", Set: "test-a"}
	require.NoError(t, site.Remove(ctx, ref))
	require.NoDirExists(t, setPath(dir, "m", "test-a"))
	require.NoDirExists(t, leftover, "the machine's next operation removes leftovers")
	require.NoError(t, site.Remove(ctx, ref), "removing a removed set")
	entries, err := os.ReadDir(filepath.Join(dir, "m"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only staged is left")
	require.ErrorIs(t, site.Remove(ctx, msg.TargetRef{Dir: dir, Machine: "m", Set: "../m"}), protocol.ErrInvalid)
}

func TestMarkWritten(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	ctx := t.Context()
	ref := msg.TargetRef{Dir: dir, Machine: "m", Set: SetLive}
	require.ErrorIs(t, site.MarkWritten(ctx, ref), protocol.ErrNotFound)
	staged(t, site, dir, "m", 1, twoDisks())
	require.NoError(t, site.Promote(ctx, dir, "m"))
	require.NoError(t, site.MarkWritten(ctx, ref))
	sets, err := site.Status(ctx, dir, "m")
	require.NoError(t, err)
	require.True(t, sets[SetLive].Written)
}

// TestOperationsWaitForARestore: while a restore stream holds a machine,
// a clone waits for it; a caller that stops waiting gets busy, and learns
// what held the machine.
func TestOperationsWaitForARestore(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(4, 4))
	p1 := twoDisks()
	mixed(rng, p1)
	staged(t, site, dir, "m", 1, p1)
	p2 := p1.clone()
	mutate(rng, p2)

	// A stream that has sent its header and one batch, and no more.
	ctrl, done := serveTCP(t, site)
	fw := frame.NewWriter(ctrl)
	hb, err := json.Marshal(header(dir, "m", SetStaged, 1, 2, p2))
	require.NoError(t, err)
	require.NoError(t, fw.Write(msg.FrameRestoreHeader, hb))
	blocks := p2.encode(t, p2.diff(p1))
	n, err := writeBatches(fw, 2, 0, blocks[:1], 1)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		sets, err := site.Status(t.Context(), dir, "m")
		return err == nil && sets[SetStaged].MovingTo == 2
	}, 10*time.Second, 5*time.Millisecond, "the move never began")

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = site.Clone(cancelled, dir, "m", "test-1")
	require.ErrorIs(t, err, protocol.ErrBusy)
	require.ErrorContains(t, err, "a restore of staged to point 2")
	require.ErrorIs(t, site.Promote(cancelled, dir, "m"), protocol.ErrBusy)

	// A clone that waits gets the set at point 2, once the stream ends.
	cloned := make(chan error, 1)
	go func() {
		_, err := site.Clone(t.Context(), dir, "m", "test-2")
		cloned <- err
	}()
	n, err = writeBatches(fw, 2, n, blocks[1:], 5)
	require.NoError(t, err)
	bar := data.Barrier{Cycle: 2, Seq: n}
	require.NoError(t, fw.WriteAppend(data.FrameBarrier, bar.Append))
	require.NoError(t, fw.Flush())
	_, err = readReply(ctrl)
	require.NoError(t, err)
	require.NoError(t, wait(t, done).err)
	require.NoError(t, wait(t, cloned))
	requireContent(t, setPath(dir, "m", "test-2"), p2)
}

// TestCloneDuringStagingIsAlwaysAPoint runs clones while moves go on: every
// clone holds one of the points exactly, never a mix.
func TestCloneDuringStagingIsAlwaysAPoint(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 5))
	points := []*image{twoDisks()}
	mixed(rng, points[0])
	for i := 1; i < 4; i++ {
		next := points[i-1].clone()
		mutate(rng, next)
		mutate(rng, next)
		points = append(points, next)
	}
	staged(t, site, dir, "m", 1, points[0])

	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; i < len(points); i++ {
			h := header(dir, "m", SetStaged, int64(i), int64(i+1), points[i])
			_, s, err := restoreTCP(t, site, h, points[i].encode(t, points[i].diff(points[i-1])))
			if err != nil || s.err != nil {
				t.Errorf("move %d: %v / %v", i, err, s.err)
				return
			}
		}
	})
	var clones []string
	for i := 0; i < 6; i++ {
		name := "test-" + string(rune('a'+i))
		_, err := site.Clone(t.Context(), dir, "m", name)
		require.NoError(t, err)
		clones = append(clones, name)
	}
	wg.Wait()
	for _, name := range clones {
		st, err := ReadState(setPath(dir, "m", name))
		require.NoError(t, err)
		require.Zero(t, st.MovingTo)
		requireContent(t, setPath(dir, "m", name), points[st.Point-1])
	}
}
