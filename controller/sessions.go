package controller

import (
	"context"
	"sync"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// agentConn is a live agent session.
type agentConn struct {
	agentID string
	name    string
	sess    *session.Session
	addr    string
	since   time.Time
	// offset converts the agent's clock to ours: controller = agent + offset.
	offset time.Duration
	// perms is what the agent said it allows at hello (nil: not said yet,
	// or an agent older than msg.HelloRequest.Permissions).
	perms *msg.Permissions
	mu    sync.Mutex
}

func (c *agentConn) permissions() *msg.Permissions {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.perms
}

func (c *agentConn) clockOffset() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offset
}

// registry holds the live sessions, one per agent.
type registry struct {
	mu   sync.Mutex
	live map[string]*agentConn
	// grants are the reserved point names agents were asked to use.
	grants shipGrants
}

func newRegistry() *registry { return &registry{live: map[string]*agentConn{}} }

// add registers a session and returns the one it replaces (a reconnect).
func (r *registry) add(c *agentConn) *agentConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.live[c.agentID]
	r.live[c.agentID] = c
	return old
}

// remove unregisters c if it is still the live session of its agent.
func (r *registry) remove(c *agentConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live[c.agentID] == c {
		delete(r.live, c.agentID)
		return true
	}
	return false
}

func (r *registry) get(agentID string) (*agentConn, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.live[agentID]
	return c, ok
}

// call runs an RPC on a connected agent.
func (r *registry) call(ctx context.Context, agentID, name, method string, req, resp any) error {
	c, ok := r.get(agentID)
	if !ok {
		return protocol.Errorf(protocol.CodeUnavailable, "agent %s is not connected", name)
	}
	return rpc.Call(ctx, c.sess, method, req, resp)
}
