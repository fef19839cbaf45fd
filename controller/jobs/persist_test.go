package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
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
func storedJob(cat *catalog.Catalog, id string) (api.Job, error) {
	var j api.Job
	row, err := cat.Job(context.Background(), id)
	if err != nil {
		return j, err
	}
	return j, json.Unmarshal([]byte(row.Data), &j)
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
	stored, err := storedJob(cat, j.ID)
	require.NoError(t, err)
	require.Len(t, stored.Actions, k.n, "the catalog's job holds every action")
}

// displayKind's step "display" makes display changes (notes, a machine's
// step and state) and checks that none is written at once, that one write
// within displayDelay holds them all, and that a durable change (SetData)
// carries the display changes made before it.
type displayKind struct {
	cat   *catalog.Catalog
	store *heldStore
}

func (k *displayKind) Steps(json.RawMessage) ([]string, error) { return []string{"display"}, nil }
func (k *displayKind) Rollback(context.Context, *Run) error    { return nil }
func (k *displayKind) Finish(context.Context, *Run, string)    {}

func (k *displayKind) Run(ctx context.Context, r *Run, step string) error {
	// The checks return errors (the job fails, and the test with the
	// message): require would end this goroutine, not the test.
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
	if n := len(r.snapshot().Machines[0].Notes); n != 16 {
		return fmt.Errorf("watchers see %d notes, want 16 at once", n)
	}
	if n := k.store.count(); time.Since(start) < displayDelay/2 && n != before {
		return fmt.Errorf("display changes were written at once (%d writes)", n-before)
	}
	for deadline := time.Now().Add(5 * time.Second); k.store.count() == before; {
		if time.Now().After(deadline) {
			return errors.New("display changes not written within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(displayDelay + 100*time.Millisecond)
	if n := k.store.count() - before; n != 1 {
		return fmt.Errorf("19 display changes took %d writes, want 1", n)
	}
	stored, err := storedJob(k.cat, r.ID())
	if err != nil {
		return err
	}
	m := stored.Machines[0]
	if len(m.Notes) != 16 || m.State != "moved" || m.PointID != 7 || len(m.Steps) != 1 || m.Steps[0].State != api.StepRunning {
		return fmt.Errorf("the stored job lacks display changes: %+v", m)
	}

	// A display change, then a durable one: the durable write carries both.
	r.MachineNote("m1", "just before the data")
	if err := r.SetData(map[string]int{"x": 1}); err != nil {
		return err
	}
	if stored, err = storedJob(k.cat, r.ID()); err != nil {
		return err
	}
	if !slices.Contains(stored.Machines[0].Notes, "just before the data") {
		return errors.New("the durable write did not carry the note made before it")
	}
	n := k.store.count()
	time.Sleep(displayDelay + 100*time.Millisecond)
	if k.store.count() != n {
		return errors.New("the scheduled write wrote again what the durable write held")
	}
	return nil
}

// TestDisplayChangesAreStoredSoonInOneWrite: notes, a machine's own steps
// and its state (what a job shows, not what it resumes from) reach
// watchers at once and the catalog within displayDelay, many in one
// write, or with the next durable change.
func TestDisplayChangesAreStoredSoonInOneWrite(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	store := &heldStore{Catalog: cat}
	k := &displayKind{cat: cat, store: store}
	e := New(store, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State, "job error: %s", j.Error)
}
