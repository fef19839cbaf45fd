package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// errReplaced is why a reconnect abandons an agent's old session.
var errReplaced = errors.New("replaced by a new session of the same agent")

// allowKind gates the streams an agent may open: without a certificate
// only enrolment; with one, everything, unless the certificate or its
// agent was revoked (checked on every stream, so a revocation bites at once).
func (s *Server) allowKind(k protocol.StreamKind, peer []*x509.Certificate) error {
	if len(peer) == 0 {
		if k == protocol.KindEnrol {
			return nil
		}
		return protocol.Errorf(protocol.CodeUnauthorized, "a client certificate is required for %s streams (enrol first)", k)
	}
	if _, err := s.cat.CertStatus(context.Background(), serialOf(peer[0])); err != nil {
		return protocol.Errorf(protocol.CodeUnauthorized, "certificate refused: %v", err)
	}
	return nil
}

func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// serveAgent runs one session on the agent port.
func (s *Server) serveAgent(ctx context.Context, tc *tls.Conn) {
	cfg := session.Config{
		TLS: nil, Name: "controller", AllowKind: s.allowKind, HandshakeTimeout: preauthHandshakeTimeout,
		Logger: s.log.With("component", "session", "remote", tc.RemoteAddr().String()),
	}
	if !s.certAccepted(ctx, tc.ConnectionState()) {
		// No certificate, or a revoked or unknown one: the peer gets what
		// anyone gets (docs/limits.md), and learns why on its first stream.
		cfg = enrolSessionConfig(cfg)
	}
	sess, err := session.Server(ctx, tc, cfg)
	if err != nil {
		s.log.Info("session refused", "remote", tc.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	defer sess.Close()
	peer := sess.PeerCertificates()
	if len(peer) == 0 {
		s.serveEnrolment(ctx, sess)
		return
	}
	agentID, err := s.cat.CertStatus(ctx, serialOf(peer[0]))
	if err != nil {
		s.log.Info("agent refused", "remote", tc.RemoteAddr().String(), "err", err)
		// Let the agent's first stream learn why before the session ends.
		st, aerr := sess.Accept(ctx)
		if aerr == nil {
			st.Reset(protocol.Errorf(protocol.CodeUnauthorized, "certificate refused: %v", err))
		}
		return
	}
	a, err := s.cat.Agent(ctx, agentID)
	if err != nil {
		return
	}
	if n, err := s.cat.RetireOtherCerts(ctx, agentID, serialOf(peer[0])); err != nil || n > 0 {
		s.log.Info("renewed certificate in use: older ones revoked", "agent", a.Name, "revoked", n, "err", err)
	}
	conn := &agentConn{agentID: agentID, name: a.Name, sess: sess, addr: tc.RemoteAddr().String(), since: s.now()}
	if old := s.agents.add(conn); old != nil {
		// A reconnect replaces the old session. Its link is as good as
		// lost: work on it (a restore stream) fails retryably and goes on
		// over the new session, not with the final ErrClosed.
		old.sess.Abandon(errReplaced)
	}
	log := s.log.With("agent", a.Name, "agent_id", agentID)
	log.Info("agent connected", "remote", conn.addr)
	ctx = s.ing.NewSession(ctx) // this session's cycles are its own (ingest.WithSession)
	defer func() {
		if s.agents.remove(conn) {
			s.ing.Forget(agentID)
			s.cat.TouchAgent(context.Background(), agentID)
			log.Info("agent disconnected", "err", sess.Err())
		}
	}()
	mux := s.agentMux(conn)
	for {
		st, err := sess.Accept(ctx)
		if err != nil {
			return
		}
		s.spawn(func() {
			defer st.Close()
			switch st.Kind() {
			case protocol.KindControl:
				rpc.ServeStream(ctx, st, mux.Serve)
			case protocol.KindData:
				if err := s.ing.ServeData(ctx, agentID, s.disk.reader(st)); err != nil {
					log.Warn("data stream ended", "err", err)
					if errors.Is(err, protocol.ErrInvalid) || errors.Is(err, protocol.ErrTooLarge) {
						// A peer that sends malformed frames is not trusted
						// with its other streams either: drop the session.
						log.Warn("dropping the session of a misbehaving agent")
						sess.Close()
					}
				}
			case protocol.KindHashes:
				s.serveHashes(ctx, agentID, st)
			default:
				st.Reset(protocol.Errorf(protocol.CodeInvalid, "the controller does not serve %s streams", st.Kind()))
			}
		})
	}
}

// agentMux is the RPC surface an agent's session sees.
func (s *Server) agentMux(c *agentConn) *rpc.Mux {
	m := &rpc.Mux{}
	m.Handle(msg.MethodHello, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.HelloRequest](body)
		if err != nil {
			return nil, err
		}
		if err := s.cat.AgentSeen(ctx, c.agentID, c.addr, req.Version, req.Platform, req.Hostname); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.perms = req.Permissions
		c.mu.Unlock()
		if req.RepositoryKey != "" {
			s.log.Info("agent holds a repository key", "agent", c.name, "fingerprint", req.RepositoryKey,
				"this_repository", s.repo.Encrypted() && s.repo.PublicKey().Fingerprint() == req.RepositoryKey)
		}
		s.spawn(func() { s.afterHello(context.WithoutCancel(ctx), c) })
		return msg.HelloResponse{AgentID: c.agentID, Name: c.name, ServerTime: s.now().UnixNano()}, nil
	})
	m.Handle(msg.MethodRenew, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.RenewRequest](body)
		if err != nil {
			return nil, err
		}
		pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
		if err != nil {
			return nil, protocol.Errorf(protocol.CodeInvalid, "public key: %v", err)
		}
		cert, err := s.ca.IssueClient(c.agentID, pub)
		if err != nil {
			return nil, err
		}
		if err := s.cat.AddCert(ctx, c.agentID, serialOf(cert), cert.NotAfter); err != nil {
			return nil, err
		}
		return msg.RenewResponse{Cert: pemCert(cert)}, nil
	})
	m.Handle(msg.MethodCycleBegin, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.CycleBeginRequest](body)
		if err != nil {
			return nil, err
		}
		if err := s.replicating(ctx, c.agentID, req.Machine); err != nil {
			return nil, err
		}
		s.specMu.RLock()
		defer s.specMu.RUnlock()
		if err := s.cycleMatchesSpec(ctx, c.agentID, req); err != nil {
			return nil, err
		}
		if err := s.disk.check(true); err != nil {
			return nil, err // ingest pauses: the agent retries
		}
		if err := s.checkQuota(ctx, req.Machine); err != nil {
			return nil, err
		}
		if m, err := s.cat.Machine(ctx, req.Machine); err == nil && m.Resync {
			req.Map.Valid = false // after a cancelled failover: compare every block
		}
		return s.ing.Begin(ctx, c.agentID, req)
	})
	m.Handle(msg.MethodCycleEnd, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.CycleEndRequest](body)
		if err != nil {
			return nil, err
		}
		if err := s.replicating(ctx, c.agentID, req.Machine); err != nil {
			return nil, err
		}
		if reservedPointName(req.Name) && !s.agents.grants.has(shipGrant{c.agentID, req.Machine, req.Name}) {
			return nil, protocol.Errorf(protocol.CodeInvalid, "point name %q: names starting with %s are Ferry's own", req.Name, strings.Join(reservedPointPrefixes, " or "))
		}
		return s.ing.End(ctx, c.agentID, req, c.clockOffset())
	})
	m.Handle(msg.MethodReport, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.ReportRequest](body)
		if err != nil {
			return nil, err
		}
		if _, err := s.requireActsFor(ctx, c.agentID, req.Machine); err != nil {
			return nil, err
		}
		s.recordReport(req, c.clockOffset())
		return struct{}{}, nil
	})
	return m
}

// replicating refuses cycles of a machine that is not this agent's to
// replicate right now: another agent acts for it (ownership.go), or it is
// at home in a state that ships no cycles (unprotected, failing over).
func (s *Server) replicating(ctx context.Context, agentID, machine string) error {
	if s.agents.grants.hasMachine(agentID, machine) {
		// The controller asked this agent to ship a named point of the
		// machine (target.ship): the home agent keeping the home disks
		// before re-protection overwrites them (ownership.go).
		return nil
	}
	m, err := s.requireActsFor(ctx, agentID, machine)
	if err != nil {
		return err
	}
	if m.AtRecovery() || m.Reversed() {
		// The recovery site ships the machine's disks (the writes made
		// there) while it runs there.
		return nil
	}
	if !replicates(m.State) {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "machine %s is %s: replication is stopped", machine, m.State)
	}
	return nil
}

// offsetSamples bounds the round trips that measure an agent's clock;
// offsetGoodRTT ends them early.
const (
	offsetSamples = 5
	offsetGoodRTT = 2 * time.Millisecond
)

// measureOffset estimates controller − agent clock from the round trip
// with the smallest RTT of a few: the estimate's error is at most half
// that RTT, and one slow answer (a busy agent at session start: hundreds
// of milliseconds) would put every point's instant off by half of it.
func (s *Server) measureOffset(ctx context.Context, c *agentConn) (time.Duration, bool) {
	var best, bestRTT time.Duration
	ok := false
	for range offsetSamples {
		t0 := s.now()
		var tr msg.TimeResponse
		if err := rpc.Call(ctx, c.sess, msg.MethodTime, struct{}{}, &tr); err != nil {
			break
		}
		rtt := s.now().Sub(t0)
		if !ok || rtt < bestRTT {
			best, bestRTT, ok = t0.Add(rtt/2).Sub(time.Unix(0, tr.UnixNano)), rtt, true
		}
		if rtt <= offsetGoodRTT {
			break
		}
	}
	return best, ok
}

// afterHello measures the agent's clock and pushes its configuration.
func (s *Server) afterHello(ctx context.Context, c *agentConn) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if off, ok := s.measureOffset(ctx, c); ok {
		c.mu.Lock()
		c.offset = off
		c.mu.Unlock()
	}
	s.fenceAgent(ctx, c) // before anything else (fence.go)
	if err := s.pushConfig(ctx, c.agentID); err != nil {
		s.log.Warn("config push failed", "agent", c.name, "err", err)
	}
	s.stager.KickAll(ctx) // a target agent may have come back
}

// serveEnrolment answers enrol streams of a session without a certificate.
func (s *Server) serveEnrolment(ctx context.Context, sess *session.Session) {
	m := &rpc.Mux{}
	m.Handle(msg.MethodEnrol, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.EnrolRequest](body)
		if err != nil {
			return nil, err
		}
		return s.enrol(ctx, req)
	})
	for {
		st, err := sess.Accept(ctx)
		if err != nil {
			return
		}
		s.spawn(func() {
			defer st.Close()
			_ = st.SetReadDeadline(time.Now().Add(enrolReadTimeout))
			rpc.ServeStreamLimit(ctx, st, m.Serve, rpc.MaxEnrolFrame)
		})
	}
}

// serveHashes answers a hash-resync stream.
func (s *Server) serveHashes(ctx context.Context, agentID string, st *session.Stream) {
	fr := frame.NewReader(st, 1<<16)
	typ, payload, err := fr.Next()
	if err != nil {
		return
	}
	var req msg.HashesRequest
	if typ != msg.FrameHashesRequest || json.Unmarshal(payload, &req) != nil {
		st.Reset(protocol.Errorf(protocol.CodeInvalid, "a hashes stream starts with a hashes request"))
		return
	}
	serve := func() error { return s.ing.ServeHashes(ctx, agentID, uint64(req.Cycle), req.Disk, req.Pending, st) }
	if req.Summary && !req.Pending {
		serve = func() error { return s.ing.ServeSummary(ctx, agentID, uint64(req.Cycle), req.Disk, fr, st) }
	}
	if err := serve(); err != nil {
		st.Reset(err)
	}
}

// enrol turns a valid token into an agent and its first certificate.
func (s *Server) enrol(ctx context.Context, req msg.EnrolRequest) (msg.EnrolResponse, error) {
	tok, err := msg.ParseToken(req.Token)
	if err != nil {
		return msg.EnrolResponse{}, protocol.Errorf(protocol.CodeInvalid, "%v", err)
	}
	if tok.Pin != s.ca.Pin() {
		return msg.EnrolResponse{}, protocol.Errorf(protocol.CodeUnauthorized, "this token was made by another controller")
	}
	name := req.Name
	if name == "" {
		name = req.Hostname
	}
	if err := validName("agent", name); err != nil {
		return msg.EnrolResponse{}, err
	}
	pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return msg.EnrolResponse{}, protocol.Errorf(protocol.CodeInvalid, "public key: %v", err)
	}
	agentID := newID("ag")
	var cert *x509.Certificate
	err = s.cat.ConsumeToken(ctx, tok.ID, func(h []byte) bool { return msg.SecretMatches(tok.Secret, h) }, func(tx catalogTx) error {
		var err error
		if cert, err = s.ca.IssueClient(agentID, pub); err != nil {
			return err
		}
		return catalog.AddAgent(ctx, tx, catalog.Agent{
			ID: agentID, Name: name, TokenID: tok.ID, CertSerial: serialOf(cert), CertNotAfter: cert.NotAfter,
			Enrolled: s.now(), Hostname: req.Hostname, Platform: req.Platform, Version: req.Version,
		})
	})
	switch {
	case errors.Is(err, catalog.ErrTokenUnknown), errors.Is(err, catalog.ErrTokenExpired),
		errors.Is(err, catalog.ErrTokenUsed), errors.Is(err, catalog.ErrTokenRevoked):
		return msg.EnrolResponse{}, protocol.Errorf(protocol.CodeUnauthorized, "enrolment refused: %v", err)
	case errors.Is(err, catalog.ErrExists):
		return msg.EnrolResponse{}, protocol.Errorf(protocol.CodeExists, "%v", err)
	case err != nil:
		return msg.EnrolResponse{}, err
	}
	s.log.Info("agent enrolled", "agent", name, "agent_id", agentID, "token", tok.ID)
	return msg.EnrolResponse{AgentID: agentID, Name: name, Cert: pemCert(cert), CA: s.ca.CAPEM()}, nil
}
