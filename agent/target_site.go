package agent

import (
	"log/slog"
	"runtime"
	"sync"
	"weak"

	"github.com/ferrydr/ferry/agent/apply"
)

// sites holds each Agent's recovery-site state — its apply.Site: the
// per-machine locks that keep a restore, a clone and a promote of one
// machine apart across sessions, and the count of bytes written — until
// the Agent struct carries it as a field (agent.go is outside this change).
// Keys are weak: agents in one process never share a Site, and a Site goes
// with its Agent.
var sites sync.Map // weak.Pointer[Agent] → *apply.Site

// site returns a's Site, made on first use.
func (a *Agent) site() *apply.Site {
	key := weak.Make(a)
	if s, ok := sites.Load(key); ok {
		return s.(*apply.Site)
	}
	cfg := apply.DefaultConfig()
	if a.log != nil {
		cfg.Logger = a.log.With("component", "target")
	} else {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := apply.NewSite(cfg)
	if err != nil {
		panic("agent: the default apply config is invalid: " + err.Error()) // a programming error
	}
	got, loaded := sites.LoadOrStore(key, s)
	if !loaded {
		runtime.AddCleanup(a, func(k weak.Pointer[Agent]) { sites.Delete(k) }, key)
	}
	return got.(*apply.Site)
}
