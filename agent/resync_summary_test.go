package agent

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestResyncSummaryNeverMissesACollidedBlock: the agent's side of a
// summary resync against a controller played by the test on a pipe. The
// disk's 8 blocks: 0 equal to the controller's; 1 different but with the
// controller's fingerprint (a collision, as a forged or unlucky block
// would have); 2 with another fingerprint; 3 zero on both; 4 data where
// the controller has zero; 5 a hole where the controller has data. The
// agent's group claim must declare 2, 4, 5 (and the 56 blocks past the
// disk) different and prove 0, 1, 3 with the digest the controller
// computes from the agent's true hashes. When the controller answers
// "mismatch" (block 1's hash is not its own), every block of the group
// is sent (0 and 1 included); when it answers "match", only 2, 4, 5 are,
// and the map holds blocks 0 and 1.
func TestResyncSummaryNeverMissesACollidedBlock(t *testing.T) {
	const bs, blocks = 4096, 8
	content := func(seed byte) []byte {
		b := make([]byte, bs)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	agentBlocks := map[int64][]byte{0: content(1), 1: content(2), 2: content(3), 4: content(5)}
	hashOf := func(b []byte) data.Hash { return data.Hash(blake3.Sum256(b)) }
	// The controller's view: 0 the same, 1 another block whose print is
	// forced equal, 2 another block, 3 zero, 4 zero, 5 data.
	ctrl0, ctrl2, ctrl5 := hashOf(agentBlocks[0]), hashOf(content(30)), hashOf(content(50))
	ctrl1 := hashOf(content(20))
	for _, h := range []data.Hash{ctrl1, ctrl2} {
		require.NotEqual(t, h, hashOf(agentBlocks[1]))
	}

	for _, mismatch := range []bool{true, false} {
		dir := t.TempDir()
		img := filepath.Join(dir, "d.img")
		f, err := os.Create(img)
		require.NoError(t, err)
		require.NoError(t, f.Truncate(blocks*bs))
		for b, c := range agentBlocks {
			_, err := f.WriteAt(c, b*bs)
			require.NoError(t, err)
		}
		require.NoError(t, f.Close())
		src, err := disk.Open(img, disk.OpenOptions{})
		require.NoError(t, err)
		m, _, err := blockmap.Open(filepath.Join(dir, "d.map"), bs, blocks*bs, "boot")
		require.NoError(t, err)
		var resynced atomic.Int64 // the resync's live progress
		d := &cycleDisk{name: "d", src: src, m: m, bs: bs, resynced: &resynced}

		agentEnd, ctrlEnd := net.Pipe()
		done := make(chan []int64, 1)
		errc := make(chan error, 1)
		go func() {
			defer agentEnd.Close()
			dirty, err := resyncSummaryOn(context.Background(), agentEnd, 7, 0, d)
			errc <- err
			done <- dirty
		}()

		fr, fw := frame.NewReader(ctrlEnd, 1<<16), frame.NewWriter(ctrlEnd)
		typ, p, err := fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(msg.FrameHashesRequest), typ)
		var req msg.HashesRequest
		require.NoError(t, json.Unmarshal(p, &req))
		require.True(t, req.Summary)

		run := data.SumRun{Start: 0, Zero: make([]bool, data.GroupBlocks), Prints: make([]data.Print, data.GroupBlocks)}
		for i := range run.Zero {
			run.Zero[i] = true
		}
		for b, h := range map[int]data.Hash{0: ctrl0, 1: ctrl1, 2: ctrl2, 5: ctrl5} {
			run.Zero[b], run.Prints[b] = false, data.PrintOf(h)
		}
		run.Prints[1] = data.PrintOf(hashOf(agentBlocks[1])) // the collision
		require.NoError(t, fw.WriteAppend(data.FrameSummary, run.Append))
		require.NoError(t, fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: 7, Seq: 1}).Append))
		require.NoError(t, fw.Flush())

		typ, p, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameVerify), typ)
		var v data.VerifyRun
		require.NoError(t, v.Decode(p))
		require.Len(t, v.Groups, 1)
		want := uint64(1<<2 | 1<<4 | 1<<5)
		for b := blocks; b < data.GroupBlocks; b++ {
			want |= 1 << b
		}
		require.Equal(t, want, v.Groups[0].Differ, "blocks declared different")
		g := data.NewGroupDigest(0, 0)
		for i := range data.GroupBlocks {
			switch {
			case want&(1<<i) != 0:
				g.Skip()
			case agentBlocks[int64(i)] == nil:
				g.Zero()
			default:
				g.Block(hashOf(agentBlocks[int64(i)]))
			}
		}
		require.Equal(t, g.Sum(), v.Groups[0].Digest, "the digest covers the agent's true hashes")
		typ, _, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(data.FrameBarrier), typ)

		verdict := data.Verified{Start: 0, Mismatch: []bool{mismatch}}
		require.NoError(t, fw.WriteAppend(data.FrameVerified, verdict.Append))
		require.NoError(t, fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: 7, Seq: 1}).Append))
		require.NoError(t, fw.Flush())
		require.NoError(t, <-errc)
		dirty := <-done
		ctrlEnd.Close()
		require.Equal(t, int64(blocks*bs), resynced.Load(), "progress counts every block of the disk compared")
		if mismatch {
			require.Equal(t, []int64{0, 1, 2, 3, 4, 5, 6, 7}, dirty, "a group whose digest failed is sent whole")
			require.Equal(t, blockmap.Unknown, m.Get(1))
		} else {
			require.Equal(t, []int64{2, 4, 5}, dirty)
			require.Equal(t, blockmap.Sum(agentBlocks[0]), m.Get(0))
			require.Equal(t, blockmap.Sum(agentBlocks[1]), m.Get(1))
		}
		require.Equal(t, blockmap.Unknown, m.Get(2))
		require.NoError(t, m.Close())
		require.NoError(t, src.Close())
	}
}
