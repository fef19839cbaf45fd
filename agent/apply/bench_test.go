package apply

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// The restore benchmark: 1 GiB of random 64 KiB blocks (they do not
// compress, so every byte is hashed and written) into a new sparse set,
// fsync included, in batches of 16 MiB as the controller sends them.
//
//	go test -run '^$' -bench Restore -benchtime 3x ./agent/apply/
//
// FERRY_BENCH_DIR puts the sets on another filesystem (an XFS mount, as
// `make bench` does); the default is the test's temporary directory.
const (
	benchSize      = 1 << 30
	benchBlockSize = 64 << 10
	benchPerBatch  = data.MaxBatchBytes / benchBlockSize
)

// benchStream is a whole restore stream for a staged set created at point
// 1, and the image it writes.
func benchStream(b *testing.B, dir string) (stream, img []byte) {
	b.Helper()
	img = make([]byte, benchSize)
	rng := rand.New(rand.NewPCG(42, 42))
	for i := 0; i < len(img); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			img[i+k] = byte(v >> (8 * k))
		}
	}
	h := msg.RestoreHeader{
		Ref: msg.TargetRef{Dir: dir, Machine: "bench", Set: SetStaged}, To: 1, Create: true,
		Disks: []msg.TargetDisk{{Name: "sda", Size: benchSize, BlockSize: benchBlockSize}},
	}
	var buf bytes.Buffer
	buf.Grow(benchSize + benchSize/benchBlockSize*64 + 1<<20)
	fw := frame.NewWriter(&buf)
	hb, _ := json.Marshal(h)
	if err := fw.Write(msg.FrameRestoreHeader, hb); err != nil {
		b.Fatal(err)
	}
	blocks := make([]data.Block, 0, benchSize/benchBlockSize)
	for off := 0; off < benchSize; off += benchBlockSize {
		p := img[off : off+benchBlockSize]
		blocks = append(blocks, data.Block{Block: uint64(off / benchBlockSize), Hash: data.Hash(blake3.Sum256(p)), PlainLen: benchBlockSize, Data: p})
	}
	n, err := writeBatches(fw, 1, 0, blocks, benchPerBatch)
	if err != nil {
		b.Fatal(err)
	}
	bar := data.Barrier{Cycle: 1, Seq: n}
	if err := fw.WriteAppend(data.FrameBarrier, bar.Append); err != nil {
		b.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), img
}

func benchDir(b *testing.B) string {
	if d := os.Getenv("FERRY_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "apply-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

func BenchmarkRestore(b *testing.B) {
	dir := benchDir(b)
	stream, img := benchStream(b, dir)
	machineDir := filepath.Join(dir, "bench")

	run := func(b *testing.B, cfg Config, serve func(site *Site) error) {
		site, err := NewSite(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(benchSize)
		for b.Loop() {
			b.StopTimer()
			if err := os.RemoveAll(machineDir); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := serve(site); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		got, err := os.ReadFile(DiskPath(filepath.Join(machineDir, SetStaged), "sda"))
		if err != nil || !bytes.Equal(got, img) {
			b.Fatalf("the restored disk differs from the image (%v)", err)
		}
	}
	fromMemory := func(site *Site) error {
		_, err := site.ServeRestore(context.Background(), struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(stream), io.Discard})
		return err
	}
	for _, c := range []struct {
		name      string
		workers   int
		writeback int64
	}{{"workers=1", 1, 32 << 20}, {"workers=2", 2, 32 << 20}, {"workers=2/no-writeback", 2, 0}} {
		b.Run("memory/"+c.name, func(b *testing.B) {
			run(b, Config{Workers: c.workers, WritebackBytes: c.writeback}, fromMemory)
		})
	}
	b.Run("session", func(b *testing.B) {
		ctrl, agent := benchSession(b)
		run(b, DefaultConfig(), func(site *Site) error {
			done := make(chan error, 1)
			go func() {
				st, err := agent.Accept(context.Background())
				if err != nil {
					done <- err
					return
				}
				defer st.Close()
				_, err = site.ServeRestore(context.Background(), st)
				done <- err
			}()
			st, err := ctrl.Open(context.Background(), protocol.KindRestore)
			if err != nil {
				return err
			}
			defer st.Close()
			go func() { _, _ = st.Write(stream) }()
			if _, _, err := frame.NewReader(st, 0).Next(); err != nil {
				return err
			}
			return <-done
		})
	})
	// The anchor, as BENCHMARKS.md's "failover materialize" case: a sparse
	// copy of the same image with cp, then its fsync.
	b.Run("anchor-cp-sparse", func(b *testing.B) {
		src := filepath.Join(dir, "img.raw")
		if err := os.WriteFile(src, img, 0o600); err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(dir, "copy.raw")
		b.SetBytes(benchSize)
		for b.Loop() {
			b.StopTimer()
			os.Remove(dst)
			b.StartTimer()
			if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
				b.Skipf("cp: %v %s", err, out)
			}
			if out, err := exec.Command("sync", dst).CombinedOutput(); err != nil {
				b.Skipf("sync: %v %s", err, out)
			}
		}
		b.StopTimer()
		os.Remove(src)
		os.Remove(dst)
	})
}

// benchSession is a real mTLS session on loopback: controller and agent.
func benchSession(b *testing.B) (ctrl, agent *session.Session) {
	ca, err := testpki.NewCA("bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	srv, _ := ca.Server()
	cli, _ := ca.Client("agent")
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ln := tls.NewListener(raw, ca.ServerConfig(srv))
	b.Cleanup(func() { ln.Close() })
	ch := make(chan *session.Session, 1)
	go func() {
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if s, err := session.Server(context.Background(), c.(*tls.Conn), session.Config{Name: "controller"}); err == nil {
			ch <- s
		}
	}()
	agent, err = session.Dial(context.Background(), raw.Addr().String(), session.Config{TLS: ca.ClientConfig(&cli), Name: "agent"})
	if err != nil {
		b.Fatal(err)
	}
	ctrl = <-ch
	if ctrl == nil {
		b.Fatal("no controller session")
	}
	b.Cleanup(func() { ctrl.Close(); agent.Close() })
	return ctrl, agent
}
