package session

import (
	"net"
	"sync"
)

// Coalescer is the connection under a session's TLS. crypto/tls writes
// each record of at most 16 KiB with its own system call, so a 1 MiB yamux
// frame costs 64 sends and 64 loopback or NIC packets' worth of wakeups on
// both sides. While corked (one write of the session's transport) the
// records are gathered and go out in as few system calls as their bytes
// need. Uncorked, it writes straight through: the TLS handshake, alerts,
// and the controller's HTTP (enrolment) connections on the same port see
// a plain connection.
type Coalescer struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    *[]byte // from coalesceBufs while corked
	err    error   // the first failed flush: the connection is broken
}

// Coalesce wraps raw, the connection a session's TLS runs over.
func Coalesce(raw net.Conn) *Coalescer { return &Coalescer{Conn: raw} }

// coalesceLimit bounds what a corked write holds before it sends: a few
// records per system call already cut their cost to a fraction, and a
// controller with many agents keeps this much per writing session only.
const coalesceLimit = 256 << 10

var coalesceBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, coalesceLimit+tlsRecordMax)
	return &b
}}

// tlsRecordMax is the largest TLS 1.3 record on the wire (16 KiB of data,
// the content type, the AEAD tag and the header, with room to spare).
const tlsRecordMax = 16<<10 + 256

func (c *Coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if c.err != nil {
		return 0, c.err
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= coalesceLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork gathers the writes that follow until uncork.
func (c *Coalescer) cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		c.corked = true
		c.buf = coalesceBufs.Get().(*[]byte)
	}
}

// uncork sends what was gathered and writes straight through again. Its
// error is the connection's: a record the TLS layer counted as sent may
// not have left.
func (c *Coalescer) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return nil
	}
	err := c.flushLocked()
	c.corked = false
	*c.buf = (*c.buf)[:0]
	coalesceBufs.Put(c.buf)
	c.buf = nil
	return err
}

func (c *Coalescer) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if err != nil {
		c.err = err
	}
	return err
}

// CloseWrite half-closes the connection when it can (a TCP connection):
// an orderly close sends close_notify, then FIN. Records a corked write
// gathered go first: the close_notify written while another goroutine's
// write was corked sits behind them, and FIN must not overtake either.
func (c *Coalescer) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		_ = c.flushLocked() // a failure is the connection's; FIN follows regardless
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
