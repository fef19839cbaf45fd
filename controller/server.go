package controller

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/alerts"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/ingest"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/pki"
	"github.com/ferrydr/ferry/controller/scrub"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/storage"
)

// Server is a running controller.
type Server struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	cat    *catalog.Catalog
	repo   *storage.Repo
	ca     *pki.Authority
	ing    *ingest.Ingest
	agents *registry
	fo     *failover.Engine
	jobs   *jobs.Engine
	stager *failover.Stager
	audit  *scrub.Auditor // the point audit

	agentAddr string

	replMu sync.Mutex
	repl   map[string]api.Replication // per machine, as its agent reports
	// progress is each machine's live cycle progress (progress.go).
	progress map[string]api.ReplicationProgress

	pruneMu sync.Mutex // retention runs one at a time

	// specMu orders `machines update` against cycle.begin: a cycle checked
	// against the old disks never begins after the update dropped the
	// repository's rows of them (a block-size change, a rename).
	specMu sync.RWMutex
	planMu sync.Mutex // plan edits read, change and write a plan whole

	disk *diskGuard // the free-space reserve of DataDir

	metrics  *metrics         // Prometheus metrics, served at /metrics
	notifier *alerts.Notifier // delivers alert notifications
	alertMu  sync.Mutex       // incidents judged, or a rule added and caught up
	drills   drills           // the boot drills running now, by machine

	// runCtx is Run's context; bg counts the goroutines Run waits for.
	runCtx context.Context
	bg     sync.WaitGroup
}

// New checks the configuration; Run does the work.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "controller"), now: cfg.Now,
		agents: newRegistry(), repl: map[string]api.Replication{},
		progress: map[string]api.ReplicationProgress{}}
	s.metrics = newMetrics(s)
	s.notifier = s.newNotifier()
	return s, nil
}

// Run serves until ctx ends. The job engine runs before any listener
// accepts a request (no job can start outside its lifetime or be resumed
// twice), and Run returns only after every goroutine it started — servers,
// agent sessions and their streams, the stager, retention and jobs — has
// stopped; the catalog and the repository close last.
func (s *Server) Run(parent context.Context) error {
	if err := s.open(parent); err != nil {
		s.close()
		return err
	}
	ctx, cancel := context.WithCancel(parent)
	s.runCtx = ctx
	var stops []func()
	defer func() {
		cancel()
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		s.agents.closeAll()
		s.bg.Wait()
		s.jobs.Wait()
		s.notifier.Wait() // after the jobs and the alert loop: nothing sends any more
		s.close()
	}()
	if err := s.jobs.Resume(ctx); err != nil {
		return fmt.Errorf("resuming jobs: %w", err)
	}
	s.spawn(func() { s.stager.Run(ctx) })
	s.spawn(func() { s.retentionLoop(ctx) })
	s.spawn(func() { s.alertLoop(ctx) })
	s.spawn(func() { s.audit.Run(ctx) })
	s.spawn(func() { s.compactLoop(ctx) })
	s.spawn(func() { s.drillLoop(ctx) })

	agentLn, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	s.agentAddr = agentLn.Addr().String()
	httpLn := newChanListener(agentLn.Addr())
	stops = append(stops, func() { agentLn.Close(); httpLn.Close() })
	adminLn, err := listenUnix(s.cfg.AdminSocket)
	if err != nil {
		return err
	}
	serve := func(srv *http.Server, ln net.Listener) {
		stops = append(stops, func() {
			shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(shut)
			srv.Close()
		})
		s.spawn(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				s.log.Error("server stopped", "err", err)
			}
		})
	}
	serve(&http.Server{Handler: s.adminHandler(""), ReadHeaderTimeout: 10 * time.Second,
		ConnContext: admin.SocketConnContext}, adminLn)
	serve(limitedHTTPServer(s.installHandler()), httpLn)
	adminAddr := s.cfg.AdminSocket
	if s.cfg.AdminListen != "" {
		token, err := s.adminToken()
		if err != nil {
			return err
		}
		raw, err := net.Listen("tcp", s.cfg.AdminListen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.cfg.AdminListen, err)
		}
		// Each connection is charged until it closes (docs/limits.md).
		ln := tls.NewListener(budgetListener{Listener: raw, b: newBudget(adminBudget), cost: httpCost},
			s.serverTLS([]string{"http/1.1"}, tls.NoClientCert))
		serve(limitedHTTPServer(s.adminHTTP(token)), ln)
		adminAddr = "https://" + ln.Addr().String()
	}
	s.spawn(func() {
		if err := s.acceptAgents(ctx, agentLn, httpLn); !errors.Is(err, net.ErrClosed) {
			s.log.Error("server stopped", "err", err)
		}
	})

	s.log.Info("listening", "agents", s.agentAddr, "admin", adminAddr)
	if s.cfg.OnReady != nil {
		s.cfg.OnReady(s.agentAddr, adminAddr)
	}
	<-ctx.Done()
	return nil
}

// adminHandler is the admin API with /metrics, behind token when set.
func (s *Server) adminHandler(token string) *admin.Server {
	a := admin.NewServer(s, token, s.log.With("component", "admin"))
	a.Mount("GET /metrics", s.metrics.handler())
	return a
}

// spawn runs f in a goroutine that Run waits for before it returns. Call
// it only from Run or from a goroutine spawn started (the wait group's
// count is then above zero).
func (s *Server) spawn(f func()) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f()
	}()
}

func (s *Server) open(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return err
	}
	var err error
	if s.disk, err = newDiskGuard(s.cfg.DataDir, s.cfg.Reserve); err != nil {
		return err
	}
	if s.cat, err = catalog.Open(ctx, filepath.Join(s.cfg.DataDir, "catalog.db"), s.now); err != nil {
		return err
	}
	if err := s.cat.EnsureDefaultPolicy(ctx); err != nil {
		return err
	}
	repoDir := filepath.Join(s.cfg.DataDir, "repository")
	if _, err := os.Stat(repoDir); errors.Is(err, os.ErrNotExist) {
		opts := storage.DefaultCreateOptions()
		opts.Logger = s.log.With("component", "storage")
		if s.cfg.PublicKeyFile != "" {
			if opts.PublicKey, err = storage.LoadPublicKeyFile(s.cfg.PublicKeyFile); err != nil {
				return err
			}
		}
		if err := storage.Create(ctx, repoDir, opts); err != nil {
			return err
		}
	}
	oo := storage.DefaultOpenOptions()
	oo.Logger = s.log.With("component", "storage")
	// The controller is the index's only user: in exclusive locking mode
	// SQLite keeps the WAL index in the process's memory, with no -shm file
	// and no fcntl lock taken and dropped around every statement (14,274
	// of them on index.db-shm during one bench plan of 20 machines).
	oo.ExclusiveLock = true
	if s.repo, err = storage.Open(ctx, repoDir, oo); err != nil {
		return err
	}
	if s.ca, err = pki.Load(pki.Config{Dir: filepath.Join(s.cfg.DataDir, "pki"), Hosts: s.cfg.Hosts, Now: s.now}); err != nil {
		return err
	}
	s.ing, err = ingest.New(ingest.Config{
		Repo: s.repo, Log: s.log.With("component", "ingest"), Now: s.now,
		OnCommit: s.pointCommitted, RecordNote: s.recordPointNote, OnStored: s.metrics.batchStored, CanPatch: !s.repo.Encrypted(),
		Owners: s.machinesOf,
	})
	if err != nil {
		return err
	}
	s.openFailover()
	s.audit = scrub.New(scrub.Config{Repo: s.repo, Store: s.cat, Log: s.log.With("component", "audit"), Now: s.now,
		Rate: s.cfg.AuditRate, Every: s.cfg.AuditEvery, OnDamage: s.damageFound})
	return nil
}

func (s *Server) close() {
	if s.ing != nil {
		s.ing.Close()
	}
	if s.repo != nil {
		s.repo.Close()
	}
	if s.cat != nil {
		s.cat.Close()
	}
}

// serverTLS is the TLS configuration of the agent port and the TCP admin port.
func (s *Server) serverTLS(protos []string, auth tls.ClientAuthType) *tls.Config {
	cert, key := s.ca.ServerCertificate()
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.CACert())
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw, s.ca.CACert().Raw}, PrivateKey: key, Leaf: cert}},
		ClientAuth:   auth,
		ClientCAs:    pool,
		NextProtos:   protos,
	}
}

// acceptAgents serves the agent port: a TLS handshake, then ALPN decides
// between an agent session and the HTTPS install endpoints.
func (s *Server) acceptAgents(ctx context.Context, ln net.Listener, httpLn *chanListener) error {
	conf := s.serverTLS([]string{protocol.ALPN, "http/1.1"}, tls.VerifyClientCertIfGiven)
	pre := newBudget(preauthBudget) // docs/limits.md
	for {
		raw, err := ln.Accept()
		if err != nil {
			return err
		}
		ch, ok := pre.admit(raw.RemoteAddr(), handshakeCost)
		if !ok {
			pre.refused(s.log, raw.RemoteAddr())
			raw.Close()
			continue
		}
		s.spawn(func() {
			tc := tls.Server(session.Coalesce(raw), conf)
			hctx, cancel := context.WithTimeout(ctx, preauthHandshakeTimeout)
			err := tc.HandshakeContext(hctx)
			cancel()
			if err != nil {
				ch.release()
				s.log.Info("TLS handshake refused", "remote", raw.RemoteAddr().String(), "err", err)
				raw.Close()
				return
			}
			st := tc.ConnectionState()
			cost := int64(httpCost)
			if st.NegotiatedProtocol == protocol.ALPN {
				cost = enrolCost
			}
			if st.NegotiatedProtocol == protocol.ALPN && s.certAccepted(ctx, st) {
				ch.release() // an enrolled agent: its session has its own limits
				s.serveAgent(ctx, tc)
				return
			}
			if !ch.resize(cost) {
				ch.release()
				pre.refused(s.log, raw.RemoteAddr())
				raw.Close()
				return
			}
			if st.NegotiatedProtocol == protocol.ALPN {
				s.serveAgent(ctx, tc)
				ch.release()
				return
			}
			if !httpLn.push(&chargedConn{Conn: tc, c: ch}) {
				tc.Close()
				ch.release()
			}
		})
	}
}

// adminToken returns the TCP admin token, creating DATA/admin.token.
func (s *Server) adminToken() (string, error) {
	if s.cfg.AdminToken != "" {
		return s.cfg.AdminToken, nil
	}
	path := filepath.Join(s.cfg.DataDir, "admin.token")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 24)
	rand.Read(buf)
	tok := hex.EncodeToString(buf)
	return tok, fsutil.WriteFileAtomic(path, []byte(tok+"\n"), 0o600)
}

// listenUnix listens on a 0600 Unix socket, replacing a stale socket file
// but refusing to steal one a live controller is serving.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another controller is serving %s", path)
	}
	os.Remove(path)
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
