package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// The tests in this file attack a real controller with a hostile agent: a
// client holding a real enrolled certificate that speaks the real protocol
// over TLS but sends what the real ferry-agent never would (docs/security.md
// "Hostile agent").

const tenancyBlock = 64 << 10 // the policy default block size

// hostile is an enrolled agent's identity driven by hand.
type hostile struct {
	t    *testing.T
	ctx  context.Context
	addr string
	st   *agent.State
	sess *session.Session
}

// takeOver stops a real enrolled agent and returns a hostile client with
// its certificate.
func takeOver(t *testing.T, ctx context.Context, c *Controller, a *Agent) *hostile {
	t.Helper()
	a.Proc.Stop()
	st, err := agent.LoadState(a.StateDir)
	require.NoError(t, err)
	h := &hostile{t: t, ctx: ctx, addr: c.Addr, st: st}
	h.dial()
	t.Cleanup(func() { h.sess.Close() })
	return h
}

func (h *hostile) dial() {
	h.t.Helper()
	if h.sess != nil {
		h.sess.Close()
	}
	sess, err := session.Dial(h.ctx, h.addr, session.Config{TLS: h.st.TLSConfig(), Name: "agent"})
	require.NoError(h.t, err)
	h.sess = sess
}

func (h *hostile) begin(machine string, size int64) (int64, error) {
	var resp msg.CycleBeginResponse
	err := rpc.Call(h.ctx, h.sess, msg.MethodCycleBegin, msg.CycleBeginRequest{Machine: machine,
		Disks: []msg.DiskInfo{{Name: "d", Size: size, BlockSize: tenancyBlock}}}, &resp)
	return resp.Cycle, err
}

func (h *hostile) end(machine string, cycle int64, entries uint64, name string) (int64, error) {
	var resp msg.CycleEndResponse
	err := rpc.Call(h.ctx, h.sess, msg.MethodCycleEnd, msg.CycleEndRequest{Machine: machine, Cycle: cycle, Parts: 1,
		Entries: entries, Instant: time.Now().UnixNano(), Consistency: "crash-consistent", Name: name}, &resp)
	return resp.PointID, err
}

// dataStream is one data stream of the hostile client.
type dataStream struct {
	t  *testing.T
	st *session.Stream
	fw *frame.Writer
	fr *frame.Reader
}

func (h *hostile) data() *dataStream {
	h.t.Helper()
	st, err := h.sess.Open(h.ctx, protocol.KindData)
	require.NoError(h.t, err)
	h.t.Cleanup(func() { st.Close() })
	return &dataStream{t: h.t, st: st, fw: frame.NewWriter(st), fr: frame.NewReader(st, data.MaxFrameSize)}
}

// send writes a frame. A write error is not final: a refused frame may
// have arrived and been answered before the controller closed the session,
// so the answer is still read.
func (d *dataStream) send(typ uint8, m interface{ Append([]byte) []byte }) {
	d.t.Helper()
	if err := d.fw.WriteAppend(typ, m.Append); err == nil {
		if err := d.fw.Flush(); err != nil {
			d.t.Logf("flush: %v", err)
		}
	} else {
		d.t.Logf("write: %v", err)
	}
}

// next reads the controller's next answer: a frame, or its error frame.
func (d *dataStream) next(want uint8, into interface{ Decode([]byte) error }) error {
	d.t.Helper()
	typ, payload, err := d.fr.Next()
	if err != nil {
		return err
	}
	require.Equal(d.t, want, typ, "frame type")
	require.NoError(d.t, into.Decode(payload))
	return nil
}

func (d *dataStream) manifest(cycle int64, entries ...data.Entry) (*data.Need, error) {
	d.send(data.FrameManifest, &data.Manifest{Cycle: uint64(cycle), Part: 0, Final: true, Entries: entries})
	need := &data.Need{}
	return need, d.next(data.FrameNeed, need)
}

func (d *dataStream) batch(cycle int64, blocks ...data.Block) error {
	d.send(data.FrameBatch, &data.Batch{Cycle: uint64(cycle), Seq: 0, Blocks: blocks})
	return d.next(data.FrameAck, &data.Ack{})
}

func entry(block uint64, content []byte) data.Entry {
	return data.Entry{Block: block, Hash: data.Hash(blake3.Sum256(content))}
}

func whole(block uint64, content []byte, hash data.Hash) data.Block {
	return data.Block{Block: block, Hash: hash, Codec: data.CodecNone, PlainLen: uint32(len(content)), Data: content}
}

func filled(b byte) []byte { return bytes.Repeat([]byte{b}, tenancyBlock) }

func blockOf(img []byte, i int) []byte { return img[i*tenancyBlock : (i+1)*tenancyBlock] }

func requireCode(t *testing.T, err error, code protocol.Code, msgAndArgs ...any) {
	t.Helper()
	require.Error(t, err, msgAndArgs...)
	var pe *protocol.Error
	require.True(t, errors.As(err, &pe), "want a protocol error %s, got %T %v", code, err, err)
	require.Equal(t, code, pe.Code, "error %v", err)
}

// tenancyRig is a controller with two enrolled agents, each protecting one
// machine: "victim" (machine vmv) keeps running, "attacker" (machine vma)
// is stopped after its first point and its certificate driven by hand.
type tenancyRig struct {
	c              *Controller
	victimImg      []byte
	attackerImg    []byte
	attackerPoint0 Point
	h              *hostile
}

const tenancySize = 2 << 20

// tenantImage writes a disk of distinct incompressible blocks.
func tenantImage(t *testing.T, path string, seed uint64) []byte {
	b := make([]byte, tenancySize)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return b
}

func newTenancyRig(t *testing.T) *tenancyRig {
	c := StartController(t)
	r := &tenancyRig{c: c}
	EnrollAgent(t, c, c.Addr, "victim")
	att := EnrollAgent(t, c, c.Addr, "attacker")
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	dir := t.TempDir()
	r.victimImg = tenantImage(t, filepath.Join(dir, "victim.img"), 71)
	r.attackerImg = tenantImage(t, filepath.Join(dir, "attacker.img"), 72)
	c.MustFerry("protect", "vmv", "--agent", "victim", "--disk", "d="+filepath.Join(dir, "victim.img"), "--policy", "p")
	c.MustFerry("protect", "vma", "--agent", "attacker", "--disk", "d="+filepath.Join(dir, "attacker.img"), "--policy", "p")
	c.WaitPoint("vmv", 0, time.Minute)
	r.attackerPoint0 = c.WaitPoint("vma", 0, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	r.h = takeOver(t, ctx, c, att)
	return r
}

// TestHostileAgentCannotReferenceForeignChunks: an agent that lists the
// hash of another machine's block in its manifest is asked for the bytes
// (it has not proven it possesses them); garbage sent under that hash is
// refused; and the attacker's point holds only what the attacker sent.
// Before the fix the controller answered "not needed", committed the
// victim's chunk into the attacker's point, and `points export` of the
// attacker's machine returned the victim's bytes.
func TestHostileAgentCannotReferenceForeignChunks(t *testing.T) {
	r := newTenancyRig(t)
	c, h := r.c, r.h
	// The victim's block the attacker knows the hash of: data, and
	// nowhere in the attacker's own disk.
	var secret []byte
	for i := 0; i < tenancySize/tenancyBlock && secret == nil; i++ {
		b := blockOf(r.victimImg, i)
		if !bytes.Equal(b, make([]byte, tenancyBlock)) && !bytes.Contains(r.attackerImg, b) {
			secret = b
		}
	}
	require.NotNil(t, secret, "the victim's image has a block of data of its own")
	own := filled(0xa1)

	cycle, err := h.begin("vma", tenancySize)
	require.NoError(t, err)
	ds := h.data()
	need, err := ds.manifest(cycle, entry(0, secret), entry(1, own))
	require.NoError(t, err)
	require.Len(t, need.Need, 2)
	if !need.Need[0] {
		// The controller took the hash as proof. Finish the attack to
		// show what it yields.
		require.NoError(t, ds.batch(cycle, whole(1, own, data.Hash(blake3.Sum256(own)))))
		pid, err := h.end("vma", cycle, 2, "")
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(c.Export("vma", pid), "d.raw"))
		require.NoError(t, err)
		require.False(t, bytes.Equal(blockOf(got, 0), secret), "the attacker's export returned the victim's block")
		t.Fatal("the controller answered \"not needed\" for another machine's block")
	}
	require.True(t, need.Need[1])

	// Garbage under the victim's hash: the content is checked even though
	// a chunk with that hash is stored, and the misbehaving session drops.
	err = ds.batch(cycle, whole(0, filled(0x00+1), data.Hash(blake3.Sum256(secret))))
	requireCode(t, err, protocol.CodeInvalid, "garbage under a stored hash must be refused")

	// The attacker's honest cycle: its point holds what it sent.
	h.dial()
	cycle, err = h.begin("vma", tenancySize)
	require.NoError(t, err)
	ds = h.data()
	mine := filled(0xb2)
	need, err = ds.manifest(cycle, entry(0, mine), entry(1, own))
	require.NoError(t, err)
	require.Equal(t, []bool{true, true}, need.Need)
	require.NoError(t, ds.batch(cycle, whole(0, mine, data.Hash(blake3.Sum256(mine))), whole(1, own, data.Hash(blake3.Sum256(own)))))
	pid, err := h.end("vma", cycle, 2, "")
	require.NoError(t, err)
	want := append([]byte(nil), r.attackerImg...)
	copy(want[0:], mine)
	copy(want[tenancyBlock:], own)
	got, err := os.ReadFile(filepath.Join(c.Export("vma", pid), "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the attacker's point holds exactly its first point and what it sent")
	require.NotContains(t, string(got), string(secret))

	// A patch cannot reach another machine's chunk either: it applies to the
	// block's current content in the attacker's own machine, and a result
	// that does not hash to the announced hash gets the same answers whether
	// that hash names a stored chunk (the victim's) or nothing: the batch is
	// acknowledged (a patch stored nowhere is checked after it is stored),
	// and the cycle's end is refused.
	patchAnswer := func(target data.Hash) (batchErr, endErr error) {
		h.dial()
		cycle, err := h.begin("vma", tenancySize)
		require.NoError(t, err)
		ds := h.data()
		need, err := ds.manifest(cycle, data.Entry{Block: 2, Hash: target})
		require.NoError(t, err)
		require.Equal(t, []bool{true}, need.Need, "asked for the content")
		patch := data.EncodePatch(data.PatchRun{Offset: 0, Data: secret[:4096]})
		if batchErr = ds.batch(cycle, data.Block{Block: 2, Hash: target, Codec: data.CodecNone, Flags: data.FlagPatch,
			PlainLen: uint32(len(patch)), Data: patch}); batchErr != nil {
			return batchErr, nil
		}
		_, endErr = h.end("vma", cycle, 1, "")
		return nil, endErr
	}
	for what, target := range map[string]data.Hash{
		"a patch toward the victim's chunk":     data.Hash(blake3.Sum256(secret)),
		"a patch toward content stored nowhere": data.Hash(blake3.Sum256(filled(0xc3))),
	} {
		batchErr, endErr := patchAnswer(target)
		require.NoError(t, batchErr, what)
		requireCode(t, endErr, protocol.CodeFailedPrecondition, what)
	}

	// The victim's own points still read back as its disk.
	vp := c.Points("vmv")
	vgot, err := os.ReadFile(filepath.Join(c.Export("vmv", vp[len(vp)-1].ID), "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(r.victimImg, vgot))
}

// TestHostileAgentTouchesOnlyItsMachines: an agent cannot report another
// machine's status (before the fix any agent rewrote any machine's
// replication phase and error), cannot ship its cycles, cannot give a point
// a name Ferry reserves (target-writes-*, home-divergent-*), and a huge
// block number is refused as invalid (before: it overflowed the range
// check and failed inside storage as an internal error).
func TestHostileAgentTouchesOnlyItsMachines(t *testing.T) {
	r := newTenancyRig(t)
	c, h := r.c, r.h

	t.Run("report", func(t *testing.T) {
		err := rpc.Call(h.ctx, h.sess, msg.MethodReport, msg.ReportRequest{Machine: "vmv", Phase: "error", Error: "forged by attacker"}, nil)
		requireCode(t, err, protocol.CodeUnauthorized, "a report for another agent's machine")
		var m struct {
			Replication struct {
				Phase     string `json:"phase"`
				LastError string `json:"last_error"`
			} `json:"replication"`
		}
		c.JSON(&m, "machines", "show", "vmv")
		require.NotEqual(t, "forged by attacker", m.Replication.LastError)
		// Its own machine it may report on.
		require.NoError(t, rpc.Call(h.ctx, h.sess, msg.MethodReport, msg.ReportRequest{Machine: "vma", Phase: "idle"}, nil))
	})

	t.Run("cycle of another machine", func(t *testing.T) {
		_, err := h.begin("vmv", tenancySize)
		requireCode(t, err, protocol.CodeUnauthorized)
	})

	t.Run("reserved names", func(t *testing.T) {
		for _, name := range []string{"target-writes-job-1", "home-divergent-1"} {
			cycle, err := h.begin("vma", tenancySize)
			require.NoError(t, err)
			ds := h.data()
			need, err := ds.manifest(cycle, data.Entry{Block: 3, Flags: data.FlagZero})
			require.NoError(t, err)
			require.Equal(t, []bool{false}, need.Need)
			_, err = h.end("vma", cycle, 1, name)
			requireCode(t, err, protocol.CodeInvalid, "point name %s", name)
		}
		for _, p := range c.Points("vma") {
			require.NotContains(t, p.Name, "target-writes-")
			require.NotContains(t, p.Name, "home-divergent-")
		}
		// An ordinary name is the agent's to give.
		cycle, err := h.begin("vma", tenancySize)
		require.NoError(t, err)
		ds := h.data()
		_, err = ds.manifest(cycle, data.Entry{Block: 3, Flags: data.FlagZero})
		require.NoError(t, err)
		_, err = h.end("vma", cycle, 1, "before-upgrade")
		require.NoError(t, err)
	})

	t.Run("huge block number", func(t *testing.T) {
		cycle, err := h.begin("vma", tenancySize)
		require.NoError(t, err)
		for _, blk := range []uint64{1 << 63, 1<<64 - 1, 1 << 48, tenancySize / tenancyBlock} {
			ds := h.data()
			_, err = ds.manifest(cycle, data.Entry{Block: blk, Flags: data.FlagZero})
			requireCode(t, err, protocol.CodeInvalid, "block %d", blk)
			h.dial() // an invalid frame drops the session
			cycle, err = h.begin("vma", tenancySize)
			require.NoError(t, err)
		}
	})
}

// TestDamagedChunkIsSentAgain: a byte flipped in a pack on the controller's
// disk. `ferry verify` finds it; the points reading the damaged chunk are
// listed as damaged and left out of latest, and the machine's health is
// degraded; the agent's next cycle sends that content again (it is not
// deduplicated against the damaged chunk), which makes every point whole:
// verify is clean and the newest point exports as the disk. Before, verify
// only reported: points were listed as fine, health stayed healthy, and
// every later cycle kept deduplicating against the damaged chunk.
func TestDamagedChunkIsSentAgain(t *testing.T) {
	c := StartController(t)
	a := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	img := filepath.Join(t.TempDir(), "m.img")
	want := tenantImage(t, img, 81)
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p1 := c.WaitPoint("m", 0, time.Minute)
	a.Proc.Stop()

	// Flip a byte in the middle of the biggest pack: inside a chunk.
	var pack string
	var size int64
	require.NoError(t, filepath.Walk(filepath.Join(c.Data, "repository"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && filepath.Ext(p) == ".pack" && fi.Size() > size {
			pack, size = p, fi.Size()
		}
		return err
	}))
	require.Greater(t, size, int64(tenancySize/2), "the image's chunks are in one pack")
	f, err := os.OpenFile(pack, os.O_RDWR, 0)
	require.NoError(t, err)
	b := []byte{0}
	_, err = f.ReadAt(b, size/2)
	require.NoError(t, err)
	b[0] ^= 0x20
	_, err = f.WriteAt(b, size/2)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	var rep struct {
		Damaged []struct {
			Hash string `json:"hash"`
		} `json:"damaged"`
	}
	r := c.Ferry("verify", "--json")
	require.NotEqual(t, 0, r.Code, "verify reports the damage")
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rep), r.Stdout)
	require.Len(t, rep.Damaged, 1)
	require.NotEmpty(t, rep.Damaged[0].Hash, "a chunk, not a record, was hit")

	var pts []struct {
		ID      int64 `json:"id"`
		Damaged bool  `json:"damaged"`
	}
	c.JSON(&pts, "points", "list", "m")
	require.Len(t, pts, 1)
	require.True(t, pts[0].Damaged, "points list shows the damaged point")
	require.Contains(t, c.MustFerry("points", "list", "m"), "damaged")
	var m struct {
		Health       string `json:"health"`
		HealthReason string `json:"health_reason"`
	}
	c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "degraded", m.Health, m.HealthReason)
	// latest does not pick a damaged point.
	r = c.Ferry("points", "export", "m", "--point", "latest", "--out", t.TempDir())
	require.NotEqual(t, 0, r.Code, "export of latest: %s", r.Stdout)

	// The agent comes back: its cycle resends the damaged block.
	a.Start()
	p2 := c.WaitPoint("m", p1.ID, time.Minute)
	require.Equal(t, 0, c.Ferry("verify").Code, "the content was stored again: nothing is damaged")
	pts = nil // fields left out of the JSON would keep their old values
	c.JSON(&pts, "points", "list", "m")
	require.Len(t, pts, 2)
	for _, p := range pts {
		require.False(t, p.Damaged, "point %d", p.ID)
	}
	m.Health, m.HealthReason = "", ""
	c.JSON(&m, "machines", "show", "m")
	require.NotEqual(t, "degraded", m.Health, m.HealthReason)
	for _, id := range []int64{p1.ID, p2.ID} {
		got, err := os.ReadFile(filepath.Join(c.Export("m", id), "d.raw"))
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "point %d reads the disk", id)
	}
}

// TestOwnershipFollowsTheFailover: once a machine has failed over, the
// agent of the recovery site acts for it and its source agent no longer
// does — the rule reads the machine's lifecycle (controller/ownership.go).
// Before, any agent's machine.report rewrote the machine's status, and the
// source agent was told "replication is stopped" rather than refused.
func TestOwnershipFollowsTheFailover(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	f.protect(t, "m", 16<<20)
	f.c.runJob(t, 0, "failover", "m", "--point", "latest-processed")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	src := takeOver(t, ctx, f.c, f.src)
	err := rpc.Call(ctx, src.sess, msg.MethodReport, msg.ReportRequest{Machine: "m", Phase: "error", Error: "from home"}, nil)
	requireCode(t, err, protocol.CodeUnauthorized, "the source agent reports on a failed-over machine")
	_, err = src.begin("m", 16<<20)
	requireCode(t, err, protocol.CodeUnauthorized, "the source agent ships a failed-over machine")

	site := takeOver(t, ctx, f.c, f.site.Agent)
	require.NoError(t, rpc.Call(ctx, site.sess, msg.MethodReport, msg.ReportRequest{Machine: "m", Phase: "idle"}, nil),
		"the recovery site's agent acts for the failed-over machine")
	var m struct {
		Replication struct {
			LastError string `json:"last_error"`
		} `json:"replication"`
	}
	f.c.JSON(&m, "machines", "show", "m")
	require.Empty(t, m.Replication.LastError)
}
