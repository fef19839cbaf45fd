package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// Repo is what ingest needs from the repository.
type Repo interface {
	BeginPoint(ctx context.Context, machine string, disks []storage.DiskSpec) (*storage.Pending, error)
	PendingPoint(ctx context.Context, machine string) (*storage.Pending, error)
	Points(ctx context.Context, machine string) ([]storage.Point, error)
	// HasChunksOf says which hashes are stored in a point of one of the
	// owner machines: the chunks a cycle may reference without sending.
	HasChunksOf(ctx context.Context, owners []string, hashes []storage.Hash) ([]bool, error)
	HeadBlocks(ctx context.Context, machine, disk string, fn storage.BlockFunc) error
	DamagedHashes(ctx context.Context) (map[storage.Hash]bool, error)
	// DiskNames lists the disks the repository holds rows of for a machine.
	DiskNames(ctx context.Context, machine string) ([]string, error)
	Encrypted() bool
}

// Ingest tracks the cycles in flight.
type Ingest struct {
	repo Repo
	log  *slog.Logger
	now  func() time.Time
	// OnCommit is told of every new point (retention, health, waiters).
	onCommit func(machine string, p storage.Point)
	// recordNote keeps a new point's method and reason (Config.RecordNote).
	recordNote func(ctx context.Context, machine string, point int64, method, reason string) error
	// onStored is told of the bytes of each batch stored (metrics).
	onStored func(machine string, bytes int64)
	// canPatch says whether sub-block patches can be applied (the current
	// block must be readable: not an encrypted repository without its key).
	canPatch bool
	owners   func(ctx context.Context, agentID string) ([]string, error)

	mu     sync.Mutex
	cycles map[uint64]*cycle
	// retiring are cycles taken out of cycles whose committers may still
	// be writing queued blocks, by machine: the machine's next Begin
	// waits for them (see Begin).
	retiring map[string][]*cycle
	sessions atomic.Uint64 // NewSession's counter
	dec      *data.Decompressor
}

// sessionKey carries the identity of the agent session a call or stream
// belongs to (WithSession).
type sessionKey struct{}

// WithSession marks ctx as belonging to one agent session (any value
// unique among the agent's sessions, e.g. a counter). A cycle belongs to
// the session that began it: frames and calls of another session naming
// it are refused, so nothing an older session had in flight can reach a
// newer session's cycle of the same pending point.
func WithSession(ctx context.Context, id uint64) context.Context {
	return context.WithValue(ctx, sessionKey{}, id)
}

// NewSession marks ctx as a new agent session's (WithSession with the
// next number of this Ingest): call it once per accepted session.
func (g *Ingest) NewSession(ctx context.Context) context.Context {
	return WithSession(ctx, g.sessions.Add(1))
}

func sessionOf(ctx context.Context) uint64 {
	id, _ := ctx.Value(sessionKey{}).(uint64)
	return id
}

// Config wires an Ingest.
type Config struct {
	Repo     Repo
	Log      *slog.Logger
	Now      func() time.Time
	OnCommit func(machine string, p storage.Point)
	// RecordNote keeps how a new point's view was made (cycle.end's method
	// and reason, msg.CycleEndRequest.ViewNote), before OnCommit is told
	// of the point. Optional; a failure is logged: the point stands.
	RecordNote func(ctx context.Context, machine string, point int64, method, reason string) error
	// OnStored is told of each batch stored durably: its machine and the
	// bytes received for it (compressed, as on the wire). Optional.
	OnStored func(machine string, bytes int64)
	CanPatch bool
	// Owners lists the machines an agent acts for: a cycle may reference
	// without sending only chunks stored in their points (proof of
	// possession, docs/security.md). Nil: only the cycle's own machine.
	Owners func(ctx context.Context, agentID string) ([]string, error)
}

// New builds an Ingest.
func New(cfg Config) (*Ingest, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OnCommit == nil {
		cfg.OnCommit = func(string, storage.Point) {}
	}
	if cfg.OnStored == nil {
		cfg.OnStored = func(string, int64) {}
	}
	if cfg.RecordNote == nil {
		cfg.RecordNote = func(context.Context, string, int64, string, string) error { return nil }
	}
	dec, err := data.NewDecompressor(0)
	if err != nil {
		return nil, err
	}
	return &Ingest{repo: cfg.Repo, log: cfg.Log, now: cfg.Now, onCommit: cfg.OnCommit, recordNote: cfg.RecordNote, onStored: cfg.OnStored, canPatch: cfg.CanPatch,
		owners: cfg.Owners, cycles: map[uint64]*cycle{}, retiring: map[string][]*cycle{}, dec: dec}, nil
}

// Close releases the decompressor.
func (g *Ingest) Close() { g.dec.Close() }

type blockKey struct {
	disk  uint16
	block uint64
}

// cycle is one cycle's bookkeeping. It lives in memory only: after a
// restart the agent begins a new cycle into the same pending point.
type cycle struct {
	mu          sync.Mutex
	agentID     string
	session     uint64 // sessionOf the Begin call
	machine     string
	owners      []string // machines whose stored chunks the agent possesses
	pending     *storage.Pending
	disks       []storage.DiskSpec
	parts       map[uint32]bool
	entries     uint64
	outstanding map[blockKey]outstanding // needed, not yet stored
	failed      error
	commits     *committer
	resync      string // why the cycle compares every block ("": it does not)
}

// fail records the first error that makes the cycle unusable.
func (c *cycle) fail(err error) {
	c.mu.Lock()
	if c.failed == nil {
		c.failed = err
	}
	c.mu.Unlock()
}

type outstanding struct {
	hash data.Hash
}

// Begin opens a cycle for machine on behalf of agentID and decides whether
// the agent's block map can be trusted against what is stored.
func (g *Ingest) Begin(ctx context.Context, agentID string, req msg.CycleBeginRequest) (msg.CycleBeginResponse, error) {
	if len(req.Disks) == 0 || len(req.Disks) > 1<<16-1 {
		return msg.CycleBeginResponse{}, protocol.Errorf(protocol.CodeInvalid, "a cycle needs 1 to 65535 disks")
	}
	disks := make([]storage.DiskSpec, len(req.Disks))
	for i, d := range req.Disks {
		if d.Size <= 0 {
			// A point must be something a failover can start: no empty disk.
			return msg.CycleBeginResponse{}, protocol.Errorf(protocol.CodeInvalid, "cycle of %s: disk %s has size %d; a disk of a point needs data", req.Machine, d.Name, d.Size)
		}
		disks[i] = storage.DiskSpec{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize}
	}
	head := int64(0)
	pts, err := g.repo.Points(ctx, req.Machine)
	if err != nil {
		return msg.CycleBeginResponse{}, err
	}
	if len(pts) > 0 {
		head = pts[len(pts)-1].ID
	}
	before, err := g.repo.PendingPoint(ctx, req.Machine)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return msg.CycleBeginResponse{}, err
	}
	resync, reason := false, ""
	switch {
	case !req.Map.Valid:
		resync, reason = true, "the agent's block map is missing or untrusted"
	case before != nil && req.Map.Pending == before.ID:
		// Resuming the cycle the map has acknowledgements of.
	case before == nil && req.Map.Pending == 0 && req.Map.HeadPoint == head:
	case before == nil && req.Map.Pending == head && head != 0:
		// The map holds a cycle that was committed as head before the
		// agent heard of it.
	default:
		resync = true
		reason = fmt.Sprintf("the agent's map (head %d, pending %d) does not match the controller (head %d, pending %d)",
			req.Map.HeadPoint, req.Map.Pending, head, pendingID(before))
	}
	if !resync {
		held, err := g.repo.DiskNames(ctx, req.Machine)
		if err != nil {
			return msg.CycleBeginResponse{}, err
		}
		if d := heldNewDisk(req.Disks, held); d != "" {
			resync, reason = true, fmt.Sprintf("the agent has no block map of disk %s, which the repository holds data of", d)
		}
	}
	owners := []string{req.Machine}
	if g.owners != nil {
		if owners, err = g.owners(ctx, agentID); err != nil {
			return msg.CycleBeginResponse{}, err
		}
		if !slices.Contains(owners, req.Machine) {
			owners = append(owners, req.Machine)
		}
	}
	// Ordering: every write of an earlier cycle of this machine (the same
	// pending point: a dropped session's queue, a replaced cycle) lands
	// before this cycle's first write, or never. Its committer is closed
	// (new submissions refused) and waited for before Begin answers; the
	// agent writes into the new cycle only after the answer.
	if err := g.retireMachine(ctx, req.Machine); err != nil {
		return msg.CycleBeginResponse{}, err
	}
	p, err := g.repo.BeginPoint(ctx, req.Machine, disks)
	if err != nil {
		return msg.CycleBeginResponse{}, protocol.Errorf(protocol.CodeInvalid, "begin point for %s: %v", req.Machine, err)
	}
	c := &cycle{agentID: agentID, session: sessionOf(ctx), machine: req.Machine, owners: owners, pending: p, disks: disks,
		parts: map[uint32]bool{}, outstanding: map[blockKey]outstanding{}, commits: newCommitter(p)}
	if resync {
		c.resync = reason
	}
	g.mu.Lock()
	if old := g.cycles[uint64(p.ID)]; old != nil {
		// A concurrent Begin of the same machine registered first.
		g.retiringLocked(old)
	}
	g.cycles[uint64(p.ID)] = c
	g.mu.Unlock()
	if err := g.waitRetired(ctx, req.Machine); err != nil {
		return msg.CycleBeginResponse{}, err
	}
	// The info log says one line per cycle (point committed, with the
	// resync's reason); the begin is for debugging and timing.
	g.log.Debug("cycle begins", "machine", req.Machine, "pending", p.ID, "head", head, "resync", resync, "reason", reason)
	return msg.CycleBeginResponse{Cycle: p.ID, HeadPoint: head, Resync: resync, ResyncReason: reason,
		Patches: g.canPatch && !resync, Codecs: []string{msg.WireCodecS2}}, nil
}

func pendingID(p *storage.Pending) int64 {
	if p == nil {
		return 0
	}
	return p.ID
}

// retiringLocked takes c out of service: its committer refuses new writes
// and finishes the queued ones in the background; the machine's next
// Begin waits for that. Call with g.mu held, after removing c from cycles.
func (g *Ingest) retiringLocked(c *cycle) {
	g.retiring[c.machine] = append(g.retiring[c.machine], c)
	go func() {
		c.commits.close()
		g.mu.Lock()
		defer g.mu.Unlock()
		list := g.retiring[c.machine]
		for i, x := range list {
			if x == c {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(g.retiring, c.machine)
		} else {
			g.retiring[c.machine] = list
		}
	}()
}

// retireMachine retires the machine's open cycles (a new Begin replaces
// them) and waits until no retired cycle of the machine can write.
func (g *Ingest) retireMachine(ctx context.Context, machine string) error {
	g.mu.Lock()
	for id, c := range g.cycles {
		if c.machine == machine {
			delete(g.cycles, id)
			g.retiringLocked(c)
		}
	}
	g.mu.Unlock()
	return g.waitRetired(ctx, machine)
}

// waitRetired waits until no retired cycle of the machine can write.
func (g *Ingest) waitRetired(ctx context.Context, machine string) error {
	g.mu.Lock()
	waits := append([]*cycle(nil), g.retiring[machine]...)
	g.mu.Unlock()
	for _, c := range waits {
		select {
		case <-c.commits.stopped:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// cycleFor finds an agent's cycle, begun in the session of ctx.
func (g *Ingest) cycleFor(ctx context.Context, agentID string, id uint64) (*cycle, error) {
	g.mu.Lock()
	c := g.cycles[id]
	g.mu.Unlock()
	if c == nil {
		return nil, protocol.Errorf(protocol.CodeNotFound, "no cycle %d is open (begin it first)", id)
	}
	if c.agentID != agentID {
		return nil, protocol.Errorf(protocol.CodeUnauthorized, "cycle %d belongs to another agent", id)
	}
	if c.session != sessionOf(ctx) {
		// A newer session of the agent began a cycle into the same
		// pending point: nothing of this session may reach it.
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d belongs to another session of this agent", id)
	}
	return c, nil
}

// End commits a complete cycle as a point. offset converts the agent's
// clock to the controller's (controller = agent + offset).
func (g *Ingest) End(ctx context.Context, agentID string, req msg.CycleEndRequest, offset time.Duration) (msg.CycleEndResponse, error) {
	c, err := g.cycleFor(ctx, agentID, uint64(req.Cycle))
	if err != nil {
		return msg.CycleEndResponse{}, err
	}
	c.commits.drain() // every queued write is durable before the checks
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.failed != nil:
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d failed: %v", req.Cycle, c.failed)
	case uint32(len(c.parts)) != req.Parts:
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d: %d manifest parts arrived, the agent sent %d", req.Cycle, len(c.parts), req.Parts)
	case c.entries != req.Entries:
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d: %d entries arrived, the agent sent %d", req.Cycle, c.entries, req.Entries)
	case len(c.outstanding) > 0:
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d: %d blocks were announced but not stored", req.Cycle, len(c.outstanding))
	}
	cons := storage.Consistency(req.Consistency)
	switch cons {
	case storage.AppConsistent, storage.CrashConsistent, storage.Inconsistent:
	default:
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeInvalid, "unknown consistency %q", req.Consistency)
	}
	instant := time.Unix(0, req.Instant).Add(offset)
	if now := g.now(); instant.After(now) {
		instant = now // a point never claims a future instant
	}
	method, reason := req.ViewNote()
	if method != "" {
		// Recorded before the commit, under the pending point's id (the
		// point keeps it; ids are never reused): the point must never be
		// listed without how it was made. A commit that fails leaves a
		// note no point shows. The agent's leaving does not stop it.
		if err := g.recordNote(context.WithoutCancel(ctx), c.machine, c.pending.ID, method, reason); err != nil {
			g.log.Warn("the point's method and reason were not recorded", "machine", c.machine, "point", c.pending.ID, "err", err)
		}
	}
	pt, err := c.pending.Commit(ctx, storage.CommitInfo{Instant: instant, Consistency: cons, Name: req.Name})
	if errors.Is(err, storage.ErrHashMismatch) {
		// A patch of the cycle did not give its hash (checked after it
		// was stored: docs/storage-format.md "Patch records"): the
		// agent's idea of those blocks was wrong. The pending point is
		// gone, so its next cycle resyncs; failed_precondition also
		// makes it send whole blocks.
		g.mu.Lock()
		delete(g.cycles, uint64(req.Cycle))
		g.mu.Unlock()
		go c.commits.close()
		return msg.CycleEndResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "cycle %d: %v", req.Cycle, err)
	}
	if err != nil {
		return msg.CycleEndResponse{}, err
	}
	g.mu.Lock()
	delete(g.cycles, uint64(req.Cycle))
	g.mu.Unlock()
	go c.commits.close()
	attrs := []any{"machine", c.machine, "point", pt.ID, "consistency", cons, "changed", pt.Changed, "method", method, "reason", reason}
	if c.resync != "" {
		attrs = append(attrs, "resync", c.resync)
	}
	g.log.Info("point committed", attrs...)
	g.onCommit(c.machine, pt)
	return msg.CycleEndResponse{PointID: pt.ID, Instant: pt.Instant.UnixNano()}, nil
}

// Forget drops the in-memory cycles of an agent whose session ended; the
// pending points stay in the repository for the next cycle to resume.
func (g *Ingest) Forget(agentID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, c := range g.cycles {
		if c.agentID == agentID {
			delete(g.cycles, id)
			g.retiringLocked(c)
		}
	}
}

// ForgetMachine drops a machine's in-memory cycle (unprotect, failover).
func (g *Ingest) ForgetMachine(machine string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, c := range g.cycles {
		if c.machine == machine {
			delete(g.cycles, id)
			g.retiringLocked(c)
		}
	}
}

// heldNewDisk returns a disk the agent starts a new block map for (NewMap:
// it assumes the controller holds zeros of it) although the repository
// holds rows of it (held): a disk removed and added again, or a map lost
// at the agent. Its stored blocks would read through the new point, so
// the agent must compare by hash. "" when there is none.
func heldNewDisk(disks []msg.DiskInfo, held []string) string {
	for _, d := range disks {
		if d.NewMap && slices.Contains(held, d.Name) {
			return d.Name
		}
	}
	return ""
}
