package apply

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// FuzzRestoreHeader: any header payload is refused or names a set
// directory strictly inside its target directory, with disk files inside
// the set directory.
func FuzzRestoreHeader(f *testing.F) {
	good, _ := json.Marshal(msg.RestoreHeader{
		Ref:  msg.TargetRef{Dir: "/srv/targets", Machine: "web1", Set: "test-42"},
		From: 3, To: 4, Create: true,
		Disks: []msg.TargetDisk{{Name: "sda", Size: 1 << 30, BlockSize: 65536}},
	})
	f.Add(good)
	f.Add([]byte(`{"ref":{"dir":"/t","machine":"..","set":"staged"},"to":1,"disks":[{"name":"a","size":1,"block_size":1}]}`))
	f.Add([]byte(`{"ref":{"dir":"/t","machine":"m","set":"live"},"to":1,"disks":[{"name":"../../etc/passwd","size":1,"block_size":1}]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		h, err := DecodeRestoreHeader(payload)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("a refused header is not ErrInvalid: %v", err)
			}
			return
		}
		root := filepath.Clean(h.Ref.Dir)
		setDir, err := SetDir(h.Ref.Dir, h.Ref.Machine, h.Ref.Set)
		if err != nil {
			t.Fatalf("accepted header with a bad set: %v", err)
		}
		if filepath.Dir(filepath.Dir(setDir)) != root {
			t.Fatalf("set dir %s is not two levels under %s", setDir, root)
		}
		for _, d := range h.Disks {
			if p := DiskPath(setDir, d.Name); filepath.Dir(p) != setDir || filepath.Base(p) != d.Name+".raw" || strings.HasPrefix(d.Name, ".") {
				t.Fatalf("disk %q escapes the set: %s", d.Name, p)
			}
		}
	})
}

// fuzzDisk is the one disk of FuzzRestoreFrames' set: 17 blocks of 4 KiB,
// the last partial.
var fuzzDisk = msg.TargetDisk{Name: "d", Size: 16<<12 + 100, BlockSize: 4 << 10}

// fuzzFrames encodes seed streams for FuzzRestoreFrames.
func fuzzFrames(cycle uint64, blocks []data.Block, barrier bool) []byte {
	var b bytes.Buffer
	fw := frame.NewWriter(&b)
	n, _ := writeBatches(fw, cycle, 0, blocks, 3)
	if barrier {
		bar := data.Barrier{Cycle: cycle, Seq: n}
		_ = fw.WriteAppend(data.FrameBarrier, bar.Append)
	}
	_ = fw.Flush()
	return b.Bytes()
}

func fuzzBlocks() []data.Block {
	plain := bytes.Repeat([]byte("fuzz"), 1<<10)
	h := data.Hash(blake3.Sum256(plain))
	return []data.Block{
		{Block: 0, Hash: h, PlainLen: 4096, Data: plain},
		{Block: 1, Flags: data.FlagZero, PlainLen: 4096},
		{Block: 16, Hash: h, PlainLen: 4096, Data: plain},
		{Block: 16, Flags: data.FlagZero, PlainLen: 100},
	}
}

// FuzzRestoreFrames feeds any bytes after a valid header to ServeRestore:
// it never panics or hangs, answers with exactly one ack or error frame,
// and records the move as done only when it acks.
func FuzzRestoreFrames(f *testing.F) {
	f.Add(fuzzFrames(2, fuzzBlocks(), true))
	f.Add(fuzzFrames(2, fuzzBlocks()[:2], false))
	f.Add(fuzzFrames(3, fuzzBlocks(), true))
	f.Add([]byte{0, 0, 0, 1, 8})
	f.Fuzz(func(t *testing.T, rest []byte) {
		dir := fuzzDir(t)
		site, err := NewSite(Config{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		h := msg.RestoreHeader{Ref: msg.TargetRef{Dir: dir, Machine: "m", Set: SetStaged}, From: 0, To: 2, Create: true, Disks: []msg.TargetDisk{fuzzDisk}}
		hb, _ := json.Marshal(h)
		var in bytes.Buffer
		fw := frame.NewWriter(&in)
		_ = fw.Write(msg.FrameRestoreHeader, hb)
		_ = fw.Flush()
		in.Write(rest)
		var out bytes.Buffer
		_, err = site.ServeRestore(t.Context(), struct {
			io.Reader
			io.Writer
		}{&in, &out})

		fr := frame.NewReader(&out, 0)
		typ, _, rerr := fr.Next()
		if err == nil && (rerr != nil || typ != data.FrameAck) {
			t.Fatalf("success answered with type %d, %v", typ, rerr)
		}
		if err != nil && typ != frame.TypeError {
			t.Fatalf("failure %v answered with type %d, %v", err, typ, rerr)
		}
		if _, _, rerr := fr.Next(); !errors.Is(rerr, io.EOF) {
			t.Fatalf("more than one answer: %v", rerr)
		}
		st, serr := ReadState(setPath(dir, "m", SetStaged))
		if serr != nil {
			t.Fatalf("the set: %v", serr)
		}
		if done := st.Point == 2 && st.MovingTo == 0; done != (err == nil) {
			t.Fatalf("state %+v after err %v", st, err)
		}
	})
}

// fuzzDir is a directory for one fuzz input: on tmpfs where there is one,
// since every input fsyncs several times and a disk shared with other work
// can take seconds for one fsync.
func fuzzDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "ferry-apply-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
