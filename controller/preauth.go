package controller

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// Limits on what a peer without a certificate can make the controller hold
// (docs/limits.md). Anyone who reaches the agent port gets this far; only
// enrolled agents (a certificate of this CA) get the full session.
const (
	// preauthHandshakeTimeout bounds TLS, banner and verdict.
	preauthHandshakeTimeout = 10 * time.Second
	// enrolStreams is how many streams a session without a certificate
	// may hold at once; one more ends the session.
	enrolStreams = 2
	// enrolReadTimeout is how long an enrol stream may take to send its
	// request.
	enrolReadTimeout = 10 * time.Second
	// enrolLifetime ends a session without a certificate.
	enrolLifetime = time.Minute

	// Costs charged to the pre-authentication budget, estimates of the
	// memory each holds at most. handshakeCost: a connection until its
	// TLS handshake says whether it has a certificate (TLS state, a
	// goroutine). httpCost: an install-endpoint connection (bufio buffers,
	// a goroutine). enrolCost: a session without a certificate, each of
	// its streams filling yamux's 256 KiB receive window, the frame
	// reader's 64 KiB buffer and a full enrol frame, plus the session's
	// own buffers and goroutines.
	handshakeCost = 32 << 10
	httpCost      = 64 << 10
	enrolCost     = 128<<10 + enrolStreams*(256<<10+64<<10+rpc.MaxEnrolFrame)

	// preauthBudget is the global budget of the agent port's
	// unauthenticated connections; one source address gets a quarter.
	preauthBudget = 24 << 20
	// adminBudget is the TCP admin port's (every connection costs
	// httpCost until it closes).
	adminBudget = 4 << 20
)

// enrolSessionConfig is the session configuration for a peer without a
// certificate: the smallest stream window, two streams, a short life.
func enrolSessionConfig(base session.Config) session.Config {
	base.StreamWindow = 256 << 10
	base.AcceptBacklog = enrolStreams
	base.MaxStreams = enrolStreams
	base.EndOnExcess = true
	base.MaxLifetime = enrolLifetime
	base.StreamOpenTimeout = enrolReadTimeout
	return base
}

// certAccepted says whether a connection presented a certificate that
// may open a full session: issued by this CA (TLS checked that), known and
// not revoked.
func (s *Server) certAccepted(ctx context.Context, st tls.ConnectionState) bool {
	if len(st.PeerCertificates) == 0 {
		return false
	}
	_, err := s.cat.CertStatus(ctx, serialOf(st.PeerCertificates[0]))
	return err == nil
}

// budget admits connections while their summed cost stays within a global
// limit and, per source address, within a quarter of it.
type budget struct {
	mu      sync.Mutex
	total   int64
	perAddr int64
	used    int64
	byAddr  map[string]int64

	nRefused int       // since the last warning
	lastWarn time.Time // of refusals, at most one per refusalLogEvery
}

// refusalLogEvery spaces the warnings about refused connections: a flood
// must not flood the log too.
const refusalLogEvery = 10 * time.Second

// refused logs a connection closed over budget: each at debug level, and a
// warning with the count at most every refusalLogEvery.
func (b *budget) refused(log *slog.Logger, addr net.Addr) {
	log.Debug("connection refused: pre-authentication budget spent", "remote", addr.String())
	b.mu.Lock()
	b.nRefused++
	n, warn := b.nRefused, time.Since(b.lastWarn) >= refusalLogEvery
	if warn {
		b.nRefused, b.lastWarn = 0, time.Now()
	}
	used := b.used
	b.mu.Unlock()
	if warn {
		log.Warn("connections refused: pre-authentication budget spent (docs/limits.md)",
			"refused", n, "last_remote", addr.String(), "budget_used", used, "budget", b.total)
	}
}

func newBudget(total int64) *budget {
	return &budget{total: total, perAddr: total / 4, byAddr: map[string]int64{}}
}

// charge is one connection's share of a budget.
type charge struct {
	b    *budget
	addr string
	mu   sync.Mutex
	cost int64
}

// admit charges cost for a connection from addr, or reports false when
// either limit would be passed.
func (b *budget) admit(addr net.Addr, cost int64) (*charge, bool) {
	host := hostOf(addr)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+cost > b.total || b.byAddr[host]+cost > b.perAddr {
		return nil, false
	}
	b.used += cost
	b.byAddr[host] += cost
	return &charge{b: b, addr: host, cost: cost}, true
}

// resize changes the charge to cost, or reports false (the charge
// unchanged) when that would pass a limit.
func (c *charge) resize(cost int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	d := cost - c.cost
	if d > 0 && (b.used+d > b.total || b.byAddr[c.addr]+d > b.perAddr) {
		return false
	}
	b.used += d
	b.byAddr[c.addr] += d
	if b.byAddr[c.addr] == 0 {
		delete(b.byAddr, c.addr)
	}
	c.cost = cost
	return true
}

// release returns the charge; later calls do nothing.
func (c *charge) release() { c.resize(0) }

// hostOf is the IP of a TCP address (the whole string otherwise).
func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// chargedConn releases its charge when closed.
type chargedConn struct {
	net.Conn
	c    *charge
	once sync.Once
}

func (c *chargedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.c.release)
	return err
}

// budgetListener charges every accepted connection cost against b and
// closes at once those over the budget.
type budgetListener struct {
	net.Listener
	b    *budget
	cost int64
}

func (l budgetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ch, ok := l.b.admit(c.RemoteAddr(), l.cost)
		if !ok {
			_ = c.Close()
			continue
		}
		return &chargedConn{Conn: c, c: ch}, nil
	}
}

// HTTP limits of the install endpoints and the TCP admin port.
const (
	httpHeaderTimeout = 10 * time.Second
	httpReadTimeout   = 30 * time.Second // the whole request, body included
	httpIdleTimeout   = 30 * time.Second
	httpMaxHeader     = 16 << 10
)

// limitedHTTPServer serves h with header, read and idle timeouts and a
// header size limit. No write timeout: an install download may be slow.
func limitedHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: httpHeaderTimeout, ReadTimeout: httpReadTimeout,
		IdleTimeout: httpIdleTimeout, MaxHeaderBytes: httpMaxHeader}
}
