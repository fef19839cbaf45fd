package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newTestSite(t testing.TB) *Site {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger = testLogger(t)
	s, err := NewSite(cfg)
	require.NoError(t, err)
	return s
}

// image is the expected content of a disk set: each disk's bytes.
type image struct {
	disks []msg.TargetDisk
	data  [][]byte
}

func newImage(disks ...msg.TargetDisk) *image {
	im := &image{disks: disks}
	for _, d := range disks {
		im.data = append(im.data, make([]byte, d.Size))
	}
	return im
}

func (im *image) clone() *image {
	out := &image{disks: append([]msg.TargetDisk(nil), im.disks...)}
	for _, d := range im.data {
		out.data = append(out.data, bytes.Clone(d))
	}
	return out
}

func (im *image) nblocks(d int) uint64 {
	bs := int64(im.disks[d].BlockSize)
	return uint64((im.disks[d].Size + bs - 1) / bs)
}

// block is block b of disk d, padded with zeros to the block size as the
// source agent sends it.
func (im *image) block(d int, b uint64) []byte {
	bs := im.disks[d].BlockSize
	out := make([]byte, bs)
	off := int64(b) * int64(bs)
	copy(out, im.data[d][off:min(off+int64(bs), int64(len(im.data[d])))])
	return out
}

// fill writes random (or, with text, compressible) bytes over a range.
func (im *image) fill(rng *rand.Rand, d int, off, n int64, text bool) {
	p := im.data[d][off : off+n]
	if text {
		words := []string{"staged ", "replica ", "point ", "failover ", "disk "}
		var b bytes.Buffer
		for b.Len() < len(p) {
			b.WriteString(words[rng.IntN(len(words))])
		}
		copy(p, b.Bytes())
		return
	}
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

type blockRef struct {
	disk  int
	block uint64
}

// all lists every block of every disk.
func (im *image) all() []blockRef {
	var out []blockRef
	for d := range im.disks {
		for b := uint64(0); b < im.nblocks(d); b++ {
			out = append(out, blockRef{d, b})
		}
	}
	return out
}

// diff lists the blocks of im that differ from old (same disk layout, or
// disks grown in im).
func (im *image) diff(old *image) []blockRef {
	var out []blockRef
	for d := range im.disks {
		for b := uint64(0); b < im.nblocks(d); b++ {
			if d >= len(old.disks) || b >= old.nblocks(d) || !bytes.Equal(im.block(d, b), old.block(d, b)) {
				out = append(out, blockRef{d, b})
			}
		}
	}
	return out
}

// encode makes the wire blocks of refs: zero markers for all-zero blocks,
// zstd where it shrinks, the rest as they are.
func (im *image) encode(t testing.TB, refs []blockRef) []data.Block {
	t.Helper()
	comp, err := data.NewCompressor(1)
	require.NoError(t, err)
	defer comp.Close()
	out := make([]data.Block, 0, len(refs))
	for _, r := range refs {
		plain := im.block(r.disk, r.block)
		b := data.Block{Disk: uint16(r.disk), Block: r.block, PlainLen: uint32(len(plain))}
		if bytes.Equal(plain, make([]byte, len(plain))) {
			b.Flags = data.FlagZero
		} else {
			codec, enc := comp.Compress(data.CodecZstd, nil, plain)
			b.Codec, b.Data = codec, bytes.Clone(enc)
			b.Hash = data.Hash(blake3.Sum256(plain))
		}
		out = append(out, b)
	}
	return out
}

// requireContent checks the set's files against im byte for byte.
func requireContent(t testing.TB, setDir string, im *image) {
	t.Helper()
	for d, dk := range im.disks {
		got, err := os.ReadFile(DiskPath(setDir, dk.Name))
		require.NoError(t, err)
		require.Equal(t, len(im.data[d]), len(got), "disk %s size", dk.Name)
		if !bytes.Equal(im.data[d], got) {
			for i := range got {
				if got[i] != im.data[d][i] {
					t.Fatalf("disk %s differs first at byte %d (block %d)", dk.Name, i, i/dk.BlockSize)
				}
			}
		}
	}
}

// writeRestore sends a whole restore stream: header, batches of at most
// perBatch blocks, barrier.
func writeRestore(w io.Writer, h msg.RestoreHeader, blocks []data.Block, perBatch int) error {
	fw := frame.NewWriter(w)
	hb, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := fw.Write(msg.FrameRestoreHeader, hb); err != nil {
		return err
	}
	n, err := writeBatches(fw, uint64(h.To), 0, blocks, perBatch)
	if err != nil {
		return err
	}
	bar := data.Barrier{Cycle: uint64(h.To), Seq: n}
	if err := fw.WriteAppend(data.FrameBarrier, bar.Append); err != nil {
		return err
	}
	return fw.Flush()
}

func writeBatches(fw *frame.Writer, cycle uint64, seq uint32, blocks []data.Block, perBatch int) (uint32, error) {
	for len(blocks) > 0 {
		k := min(perBatch, len(blocks))
		b := data.Batch{Cycle: cycle, Seq: seq, Blocks: blocks[:k]}
		if err := fw.WriteAppend(data.FrameBatch, b.Append); err != nil {
			return seq, err
		}
		blocks = blocks[k:]
		seq++
	}
	return seq, fw.Flush()
}

// readReply reads the agent's answer: an ack, or its error frame as err.
func readReply(r io.Reader) (data.Ack, error) {
	fr := frame.NewReader(r, 0)
	typ, p, err := fr.Next()
	if err != nil {
		return data.Ack{}, err
	}
	var ack data.Ack
	if typ != data.FrameAck {
		return ack, &frame.FormatError{Reason: "not an ack"}
	}
	return ack, ack.Decode(p)
}

type served struct {
	res RestoreResult
	err error
}

// tcpPair is a real loopback TCP connection; the agent end is served by
// site.ServeRestore, whose result arrives on the channel.
func serveTCP(t testing.TB, site *Site) (ctrl net.Conn, done <-chan served) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ch := make(chan served, 1)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctrl, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	agent, ok := <-accepted
	require.True(t, ok, "accept failed")
	go func() {
		defer agent.Close()
		res, err := site.ServeRestore(context.Background(), agent)
		ch <- served{res, err}
	}()
	return ctrl, ch
}

// restoreTCP runs one whole restore over loopback TCP and returns the
// agent's reply and its own result.
func restoreTCP(t testing.TB, site *Site, h msg.RestoreHeader, blocks []data.Block) (data.Ack, served, error) {
	t.Helper()
	ctrl, done := serveTCP(t, site)
	werr := make(chan error, 1)
	go func() { werr <- writeRestore(ctrl, h, blocks, 37) }()
	ack, err := readReply(ctrl)
	ctrl.Close()
	s := wait(t, done)
	<-werr // a refusal may cut the sender short; only the reply matters
	return ack, s, err
}

func wait[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(60 * time.Second):
		t.Fatal("timed out waiting for the agent side")
		panic("unreachable")
	}
}

func header(dir, machine, set string, from, to int64, im *image) msg.RestoreHeader {
	return msg.RestoreHeader{
		Ref:  msg.TargetRef{Dir: dir, Machine: machine, Set: set},
		From: from, To: to, Disks: append([]msg.TargetDisk(nil), im.disks...),
	}
}

func setPath(dir, machine, set string) string { return filepath.Join(dir, machine, set) }

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}

func writeAt(t testing.TB, p string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}
