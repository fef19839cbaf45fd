package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is a log destination that tests read while loggers write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// While held, the agent's records (with their attributes and groups)
// reach nothing; the last release writes them in order, before what is
// logged after; past the bound they are dropped, and the count is logged.
func TestLogHoldKeepsRecordsUntilTheLastRelease(t *testing.T) {
	var out syncBuffer
	h, handler := newLogHold(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.max = 3
	log := slog.New(handler).With("agent", "a1")

	log.Info("before")
	h.hold()
	h.hold() // a second machine's freeze overlaps the first
	log.Info("one", "n", 1)
	log.WithGroup("g").Debug("two", "n", 2)
	h.release()
	log.Info("three")
	require.Equal(t, 1, strings.Count(out.String(), "\n"), "a record was written while a hold was in force:\n%s", out.String())
	log.Info("four")
	log.Info("five")
	h.release()
	log.Info("after")

	var msgs []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.Contains(l, "dropped=") { // the count goes to the log as it is
			require.Contains(t, l, "agent=a1", "attributes are kept: %s", l)
		}
		i := strings.Index(l, "msg=")
		msgs = append(msgs, strings.Fields(l[i:])[0])
	}
	require.Equal(t, []string{"msg=before", "msg=one", "msg=two", "msg=three", `msg="log`, "msg=after"}, msgs, out.String())
	require.Contains(t, out.String(), "g.n=2")
	require.Regexp(t, `level=WARN msg="log records were dropped while a filesystem was frozen .*dropped=2 held_max=3`, out.String())
}

// blockingWriter blocks every Write until unblocked, as a log on a
// filesystem frozen by someone else would.
type blockingWriter struct {
	entered chan struct{}
	unblock chan struct{}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.entered <- struct{}{}
	<-w.unblock
	return len(p), nil
}

// hold waits for a record on its way to the log (so that nothing is
// written once the freeze begins), but not for ever: a write stuck on
// something else does not stop the freeze.
func TestLogHoldWaitsForRecordsInFlight(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 1), unblock: make(chan struct{})}
	h, handler := newLogHold(slog.NewTextHandler(w, nil))
	log := slog.New(handler)
	go log.Info("in flight")
	<-w.entered

	held := make(chan time.Duration)
	go func() {
		start := time.Now()
		h.hold()
		held <- time.Since(start)
	}()
	select {
	case d := <-held:
		t.Fatalf("hold returned after %s with a record being written", d)
	case <-time.After(holdDrainWait / 2):
	}
	close(w.unblock) // the write completes: hold returns
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("hold did not return once the record was written")
	}
	h.release()

	// Stuck for good: hold gives up after holdDrainWait.
	w2 := &blockingWriter{entered: make(chan struct{}, 1), unblock: make(chan struct{})}
	defer close(w2.unblock)
	h2, handler2 := newLogHold(slog.NewTextHandler(w2, nil))
	go slog.New(handler2).Info("stuck")
	<-w2.entered
	start := time.Now()
	h2.hold()
	took := time.Since(start)
	require.GreaterOrEqual(t, took, holdDrainWait)
	require.Less(t, took, holdDrainWait+2*time.Second)
	// Records logged meanwhile are held, not queued behind the stuck one.
	done := make(chan struct{})
	go func() { slog.New(handler2).Info("held"); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a record logged during a hold waited for the log")
	}
	require.Len(t, h2.held, 1)
}
