package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

// heldStore is the real catalog whose job writes can be held: while hold
// is set, a PutJob waits for it to close. It counts the writes.
type heldStore struct {
	*catalog.Catalog
	mu     sync.Mutex
	hold   chan struct{}
	puts   int
	inside chan struct{} // a write is waiting on hold
}

func (s *heldStore) PutJob(ctx context.Context, j catalog.JobRow) error {
	s.mu.Lock()
	s.puts++
	hold := s.hold
	s.mu.Unlock()
	if hold != nil {
		s.inside <- struct{}{}
		<-hold
	}
	return s.Catalog.PutJob(ctx, j)
}

func (s *heldStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts
}

// storedJob is the job as the catalog holds it.
func storedJob(t *testing.T, cat *catalog.Catalog, id string) api.Job {
	t.Helper()
	row, err := cat.Job(context.Background(), id)
	require.NoError(t, err)
	var j api.Job
	require.NoError(t, json.Unmarshal([]byte(row.Data), &j))
	return j
}

// actionsKind's step "actions" records n plan actions (durable changes)
// from n goroutines at once, as a plan's machines do, while the first
// write is held.
type actionsKind struct {
	store *heldStore
	n     int
	puts  int // writes the actions took
}

func (k *actionsKind) Steps(json.RawMessage) ([]string, error) { return []string{"actions"}, nil }
func (k *actionsKind) Rollback(context.Context, *Run) error    { return nil }
func (k *actionsKind) Finish(context.Context, *Run, string)    {}

func (k *actionsKind) Run(ctx context.Context, r *Run, step string) error {
	hold := make(chan struct{})
	k.store.mu.Lock()
	k.store.hold, k.store.inside = hold, make(chan struct{}, k.n)
	before := k.store.puts
	k.store.mu.Unlock()
	r.mu.Lock()
	base := r.changed
	r.mu.Unlock()
	var wg sync.WaitGroup
	for i := range k.n {
		wg.Go(func() { r.SetAction(api.JobAction{Group: 1, Phase: "pre", Index: i, State: api.StepSucceeded}) })
	}
	<-k.store.inside // the first write is in the store, held
	// Every action is recorded (each persist counted its change) before
	// the held write ends: the writers behind it wait on one write.
	for {
		r.mu.Lock()
		all := r.changed == base+uint64(k.n)
		r.mu.Unlock()
		if all {
			break
		}
		time.Sleep(time.Millisecond)
	}
	k.store.mu.Lock()
	k.store.hold = nil
	k.store.mu.Unlock()
	close(hold)
	wg.Wait()
	k.puts = k.store.count() - before
	return nil
}

// TestConcurrentPersistsCoalesce: durable changes persisted from many
// goroutines at once (a plan's machines) take one write behind the one in
// flight, not one each, and the stored job holds every change.
func TestConcurrentPersistsCoalesce(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	store := &heldStore{Catalog: cat}
	k := &actionsKind{store: store, n: 16}
	e := New(store, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.Equal(t, 2, k.puts, "16 actions: the held write and one after it")
	require.Len(t, storedJob(t, cat, j.ID).Actions, k.n, "the catalog's job holds every action")
}

// displayKind's step "display" makes display changes (notes, a machine's
// step and state) and checks that none is written at once, that one write
// within displayDelay holds them all, and that a durable change (SetData)
// carries the display changes made before it.
type displayKind struct {
	t     *testing.T
	cat   *catalog.Catalog
	store *heldStore
}

func (k *displayKind) Steps(json.RawMessage) ([]string, error) { return []string{"display"}, nil }
func (k *displayKind) Rollback(context.Context, *Run) error    { return nil }
func (k *displayKind) Finish(context.Context, *Run, string)    {}

func (k *displayKind) Run(ctx context.Context, r *Run, step string) error {
	t := k.t
	before := k.store.count()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() { r.MachineNote("m1", fmt.Sprintf("note %d", i)) })
	}
	wg.Wait()
	r.MachineStep("m1", "move", api.StepRunning, nil)
	r.SetMachine("m1", "moved", 7, nil)
	r.Note("moved")
	live := r.snapshot()
	require.Len(t, live.Machines[0].Notes, 16, "watchers see the notes at once")
	if time.Since(start) < displayDelay/2 {
		require.Equal(t, before, k.store.count(), "display changes are not written at once")
	}
	require.Eventually(t, func() bool { return k.store.count() == before+1 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(displayDelay + 100*time.Millisecond)
	require.Equal(t, before+1, k.store.count(), "19 display changes, one write")
	stored := storedJob(t, k.cat, r.ID())
	require.Len(t, stored.Machines[0].Notes, 16)
	require.Equal(t, "moved", stored.Machines[0].State)
	require.Equal(t, int64(7), stored.Machines[0].PointID)
	require.Equal(t, api.StepRunning, stored.Machines[0].Steps[0].State)

	// A display change, then a durable one: the durable write carries both.
	r.MachineNote("m1", "just before the data")
	require.NoError(t, r.SetData(map[string]int{"x": 1}))
	require.Contains(t, storedJob(t, k.cat, r.ID()).Machines[0].Notes, "just before the data")
	n := k.store.count()
	time.Sleep(displayDelay + 100*time.Millisecond)
	require.Equal(t, n, k.store.count(), "the scheduled write found nothing left to write")
	return nil
}

// TestDisplayChangesAreStoredSoonInOneWrite: notes, a machine's own steps
// and its state (what a job shows, not what it resumes from) reach
// watchers at once and the catalog within displayDelay, many in one
// write, or with the next durable change.
func TestDisplayChangesAreStoredSoonInOneWrite(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	store := &heldStore{Catalog: cat}
	k := &displayKind{t: t, cat: cat, store: store}
	e := New(store, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State, "%+v", j)
}
