package faultnet

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards TCP connections from its loopback address to a target.
type Proxy struct {
	target string
	ln     net.Listener
	log    *slog.Logger

	up, down atomic.Int64 // bytes forwarded client→target, target→client
	budget   atomic.Int64 // bytes left before a cut; math.MaxInt64 when unarmed

	mu      sync.Mutex
	pairs   map[*pair]struct{}
	stalled chan struct{} // open while stalled; nil otherwise
	closed  bool

	wg sync.WaitGroup
}

type pair struct {
	client, server net.Conn
	done           chan struct{} // closed when the pair is cut
	once           sync.Once
}

func (pr *pair) close() {
	pr.once.Do(func() {
		_ = pr.client.Close()
		_ = pr.server.Close()
		close(pr.done)
	})
}

// Listen starts a proxy on 127.0.0.1 (a free port) to target. A nil logger
// discards.
func Listen(target string, log *slog.Logger) (*Proxy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, log: log, pairs: make(map[*pair]struct{})}
	p.budget.Store(math.MaxInt64)
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Bytes reports the bytes forwarded so far in each direction.
func (p *Proxy) Bytes() (up, down int64) { return p.up.Load(), p.down.Load() }

// CutAfter arms a cut: after n more bytes (both directions together) are
// forwarded, every connection is closed; the bytes past n are not
// forwarded. n ≤ 0 cuts at the next byte.
func (p *Proxy) CutAfter(n int64) { p.budget.Store(max(n, 0)) }

// Cut closes every current connection now. New connections are still
// accepted.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.close()
		delete(p.pairs, pr)
	}
}

// Stall stops forwarding on every connection, current and new, without
// closing anything: the peers see a silent link until Resume, Cut or Close.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == nil {
		p.stalled = make(chan struct{})
	}
}

// Resume ends a stall.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
}

// Close stops the proxy, closes every connection and waits for its
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Warn("faultnet: accept", "err", err)
			}
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.log.Warn("faultnet: dial target", "target", p.target, "err", err)
			_ = c.Close()
			continue
		}
		pr := &pair{client: c, server: s, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.pairs[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(pr, pr.client, pr.server, &p.up) })
		p.wg.Go(func() { p.pipe(pr, pr.server, pr.client, &p.down) })
	}
}

// pipe forwards src to dst until either fails, honouring stalls and the
// cut budget.
func (p *Proxy) pipe(pr *pair, src, dst net.Conn, count *atomic.Int64) {
	defer p.drop(pr)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitStall(pr) {
				return
			}
			allowed := p.take(int64(n))
			if allowed > 0 {
				// Counted before the write, so that a peer that has seen the
				// bytes also sees them counted.
				count.Add(allowed)
				if _, werr := dst.Write(buf[:allowed]); werr != nil {
					return
				}
			}
			if allowed < int64(n) {
				p.log.Debug("faultnet: cut", "target", p.target)
				p.Cut()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// take consumes up to n bytes of the budget and returns how many may pass.
func (p *Proxy) take(n int64) int64 {
	for {
		left := p.budget.Load()
		if left == math.MaxInt64 {
			return n
		}
		use := min(left, n)
		if p.budget.CompareAndSwap(left, left-use) {
			return use
		}
	}
}

// waitStall blocks while the proxy is stalled; false means the pair was
// cut meanwhile.
func (p *Proxy) waitStall(pr *pair) bool {
	p.mu.Lock()
	ch := p.stalled
	p.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-pr.done:
		return false
	}
}

func (p *Proxy) drop(pr *pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr.close()
	delete(p.pairs, pr)
}
