package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/buildinfo"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// Config is the agent's configuration; cmd/ferry-agent fills it.
type Config struct {
	StateDir string
	// ScanDirs are searched for disk image files by inventory.
	ScanDirs []string
	// Streams is the number of data streams per cycle.
	Streams int
	Logger  *slog.Logger
	Now     func() time.Time
	// MaxBackoff bounds the wait between reconnection attempts.
	MaxBackoff time.Duration
	// KeepaliveInterval and KeepaliveTimeout set the session's keepalive
	// (protocol.md §4); zero keeps the session defaults (10 s, 30 s).
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// Upgrade, when set, lets the controller upgrade this agent (upgrade.go);
	// `ferry-agent run` sets it when the service's supervisor runs it.
	Upgrade *UpgradeConfig
	// TestPause, when set, is called at the named points (Pause*), where a
	// crash test holds the agent to kill a process at a known moment; nil
	// in production.
	TestPause func(point string)
	// AllowPlanScripts and AllowExecDrivers let the controller run plan
	// scripts and exec driver commands here (permissions.go), in addition
	// to what the state directory records.
	AllowPlanScripts, AllowExecDrivers bool
	// WireCodec is how cycles compress the blocks they send (ship.Config.Codec):
	// auto unless a benchmark or test fixes it (`ferry-agent run` reads
	// FERRY_WIRE_CODEC).
	WireCodec ship.CodecChoice
	// TrackWrites follows the writes to raw image files from the
	// filesystem's tracepoints, and makes each point by freezing the
	// images' filesystem just long enough to read what changed (tracked.go)
	// instead of cloning the whole file. Off by default: a freeze stops
	// every writer of that filesystem, and writes through mmap are not seen.
	TrackWrites bool
	// LogFile is the file the agent logs to, if any: write tracking does
	// not freeze the filesystem that holds it.
	LogFile string
	// MaxCapture bounds the changed bytes one frozen capture holds in
	// memory; a cycle with more takes a clone view (0: DefaultMaxCapture).
	MaxCapture int64
	// MaxFreeze bounds every freeze: a tracked freeze's, and the freeze of
	// the filesystems an app-consistent view names (0:
	// snapshot.DefaultMaxFreeze; at most snapshot.MaxFreezeLimit).
	MaxFreeze time.Duration
	// FreezeOwnFS lists the mount points that tracked freezes may freeze
	// although they are the root filesystem or hold the agent's state
	// directory or log (--freeze-own-fs; ownfs.go). While such a
	// filesystem is frozen the agent's log waits in memory
	// (logfreeze.go). Unlisted, they are refused, and the refusal names
	// the option.
	FreezeOwnFS []string
}

// Points at which Config.TestPause is called.
const (
	// PauseShipHash: a target.ship cycle (the home disks kept as a point
	// before a re-protect moves them) has begun its hash resync with the
	// controller, before the first block is hashed.
	PauseShipHash = "ship-hash"
	// PauseHomeMove: the first batch of a move into the home disks is
	// written (its undo log durable), the move not finished.
	PauseHomeMove = apply.PauseHomeMove
)

// DefaultConfig holds the defaults.
func DefaultConfig() Config {
	return Config{StateDir: DefaultStateDir(), Streams: 2, MaxBackoff: 30 * time.Second}
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.StateDir == "" {
		return errors.New("a state directory is required")
	}
	if c.Streams <= 0 {
		c.Streams = 2
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxCapture <= 0 {
		c.MaxCapture = DefaultMaxCapture
	}
	if c.MaxFreeze == 0 {
		c.MaxFreeze = snapshot.DefaultMaxFreeze
	}
	if err := snapshot.CheckMaxFreeze(c.MaxFreeze); err != nil {
		return err
	}
	own, err := checkFreezeOwnFS(c.FreezeOwnFS)
	if err != nil {
		return err
	}
	c.FreezeOwnFS = own
	codec, err := ship.ParseCodecChoice(string(c.WireCodec))
	if err != nil {
		return err
	}
	c.WireCodec = codec
	if c.KeepaliveInterval < 0 || c.KeepaliveTimeout < 0 {
		return errors.New("keepalive interval and timeout cannot be negative")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Agent is a running ferry-agent.
type Agent struct {
	cfg Config
	log *slog.Logger
	// logs holds log's records in memory during tracked freezes
	// (logfreeze.go).
	logs  *logHold
	state *State
	taker *snapshot.Taker
	comp  *data.Compressor
	// site is the recovery-site state (agent/apply): per-machine locks that
	// keep a restore, clone, convert and promote of one machine apart
	// across sessions, and the bytes written.
	site *apply.Site
	// ReadStats counts bytes read from disk containers (holes are never read).
	ReadStats disk.ReadStats

	mu       sync.Mutex
	sess     *session.Session
	sessCh   chan struct{} // closed and replaced whenever sess changes
	machines map[string]*machineLoop

	perms msg.Permissions // what the controller may run here (permissions.go)

	tracking trackers // write trackers (Config.TrackWrites)
	// pausedLeft: machines a previous run paused through their source
	// driver for a freeze and died (thawLeftFrozen); their next cycle
	// resumes them first (machineLoop.cycle).
	pausedLeft sync.Map

	// pageCacheWarned holds the block devices already warned about as
	// read through their page cache (pagecache.go).
	pageCacheWarned sync.Map
}

// New loads the agent's state.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := LoadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	comp, err := data.NewCompressor(runtime.NumCPU())
	if err != nil {
		return nil, err
	}
	perms, err := LoadPermissions(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	perms.PlanScripts = perms.PlanScripts || cfg.AllowPlanScripts
	perms.ExecDrivers = perms.ExecDrivers || cfg.AllowExecDrivers
	logs, handler := newLogHold(cfg.Logger.Handler())
	log := slog.New(handler).With("agent", st.Identity.Name)
	siteCfg := apply.DefaultConfig()
	siteCfg.Logger = log.With("component", "target")
	siteCfg.RepositoryKey = func() (*repokey.Key, error) { return repokey.Load(st.Dir) }
	siteCfg.HomeSets = filepath.Join(st.Dir, "home-sets.json")
	siteCfg.Pause = cfg.TestPause
	site, err := apply.NewSite(siteCfg)
	if err != nil {
		comp.Close()
		return nil, err
	}
	return &Agent{
		cfg: cfg, log: log, logs: logs, state: st, comp: comp, site: site,
		taker:    &snapshot.Taker{Log: log.With("component", "snapshot"), Now: cfg.Now, MaxFreeze: cfg.MaxFreeze},
		sessCh:   make(chan struct{}),
		machines: map[string]*machineLoop{},
		perms:    perms,
	}, nil
}

// Run keeps a session with the controller until ctx ends, reconnecting with
// backoff; machine loops replicate while a session is up.
func (a *Agent) Run(ctx context.Context) error {
	defer a.comp.Close()
	defer a.stopMachines()
	defer a.tracking.stop(nil)
	a.thawLeftFrozen()
	// Home disks that are a replica are held before anything else, and a
	// move this agent's previous run left half done is rolled back.
	if err := a.site.HoldHomes(ctx); err != nil {
		a.log.Error("some home disks are not held", "err", err)
	}
	defer a.site.Close()
	backoff := time.Second
	for {
		start := a.cfg.Now()
		err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if a.cfg.Now().Sub(start) > time.Minute {
			backoff = time.Second
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		a.log.Warn("controller session ended; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, a.cfg.MaxBackoff)
	}
}

func (a *Agent) session(ctx context.Context) error {
	sess, err := session.Dial(ctx, a.state.Identity.Controller, session.Config{
		TLS: a.state.TLSConfig(), Name: "agent", Logger: a.log.With("component", "session"),
		KeepaliveInterval: a.cfg.KeepaliveInterval, KeepaliveTimeout: a.cfg.KeepaliveTimeout,
		Versions: protocol.AgentVersions(),
	})
	if err != nil {
		if hint := protocol.OlderPeerHint(err, "controller"); hint != "" {
			return fmt.Errorf("%w; %s", err, hint)
		}
		return err
	}
	defer sess.Close()
	go a.serve(ctx, sess)
	var hello msg.HelloResponse
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = rpc.Call(hctx, sess, msg.MethodHello, msg.HelloRequest{
		Version: buildinfo.Version, Platform: runtime.GOOS + "/" + runtime.GOARCH, Hostname: hostname(),
		RepositoryKey: a.repositoryKey(), Permissions: &a.perms,
	}, &hello)
	cancel()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	a.log.Info("connected to controller", "controller", a.state.Identity.Controller, "agent_id", hello.AgentID)
	if a.state.NeedsRenewal(a.cfg.Now()) {
		if err := a.renew(ctx, sess); err != nil {
			a.log.Warn("certificate renewal failed", "err", err)
		} else {
			return errRenewed
		}
	}
	a.setSession(sess)
	defer a.setSession(nil)
	renew := time.NewTicker(time.Hour)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return sess.Err()
		case <-renew.C:
			if a.state.NeedsRenewal(a.cfg.Now()) {
				if err := a.renew(ctx, sess); err != nil {
					a.log.Warn("certificate renewal failed", "err", err)
				} else {
					return errRenewed
				}
			}
		}
	}
}

// errRenewed ends a session after a certificate renewal: the agent
// reconnects with the new certificate, and the controller then revokes the
// old one.
var errRenewed = errors.New("certificate renewed: reconnecting with the new one")

// renew asks for a fresh certificate for the same key.
func (a *Agent) renew(ctx context.Context, sess *session.Session) error {
	pub, err := publicKeyDER(a.state.key)
	if err != nil {
		return err
	}
	var resp msg.RenewResponse
	if err := rpc.Call(ctx, sess, msg.MethodRenew, msg.RenewRequest{PublicKey: pub}, &resp); err != nil {
		return err
	}
	if err := a.state.replaceCert(resp.Cert); err != nil {
		return err
	}
	a.log.Info("certificate renewed", "expires", a.state.cert.NotAfter)
	return nil
}

func (a *Agent) setSession(s *session.Session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sess = s
	close(a.sessCh)
	a.sessCh = make(chan struct{})
}

// currentSession returns the live session, or a channel that changes when
// one comes up.
func (a *Agent) currentSession() (*session.Session, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess, a.sessCh
}

// call runs an RPC on the controller over the live session.
func (a *Agent) call(ctx context.Context, method string, req, resp any) error {
	s, _ := a.currentSession()
	if s == nil {
		return protocol.Errorf(protocol.CodeUnavailable, "not connected to the controller")
	}
	return rpc.Call(ctx, s, method, req, resp)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
