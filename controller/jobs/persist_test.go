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

// notesKind's step "notes" records n machine notes from n goroutines at
// once, as a plan's machines do, while the first write is held.
type notesKind struct {
	store *heldStore
	n     int
	puts  int // writes the notes took
}

func (k *notesKind) Steps(json.RawMessage) ([]string, error) { return []string{"notes"}, nil }
func (k *notesKind) Rollback(context.Context, *Run) error    { return nil }
func (k *notesKind) Finish(context.Context, *Run, string)    {}

func (k *notesKind) Run(ctx context.Context, r *Run, step string) error {
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
		wg.Go(func() { r.MachineNote("m1", fmt.Sprintf("note %d", i)) })
	}
	<-k.store.inside // the first write is in the store, held
	// Every note is recorded (each persist counted its change) before the
	// held write ends: the writers behind it wait on one write.
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
	k.store.mu.Lock()
	k.puts = k.store.puts - before
	k.store.mu.Unlock()
	return nil
}

// TestConcurrentPersistsCoalesce: changes persisted from many goroutines
// at once (a plan's machines) take one write behind the one in flight,
// not one each, and the stored job holds every change.
func TestConcurrentPersistsCoalesce(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	store := &heldStore{Catalog: cat}
	k := &notesKind{store: store, n: 16}
	e := New(store, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.Equal(t, 2, k.puts, "16 notes: the held write and one after it")
	row, err := cat.Job(context.Background(), j.ID)
	require.NoError(t, err)
	var stored api.Job
	require.NoError(t, json.Unmarshal([]byte(row.Data), &stored))
	require.Len(t, stored.Machines, 1)
	want := make([]string, k.n)
	for i := range want {
		want[i] = fmt.Sprintf("note %d", i)
	}
	require.ElementsMatch(t, want, stored.Machines[0].Notes, "the catalog's job holds every note")
}
