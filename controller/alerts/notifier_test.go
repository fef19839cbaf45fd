package alerts

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/stretchr/testify/require"
)

// TestQueuedIsReportedBeforeSent: a slow Report of Queued (the controller
// writes it to its catalog) must not let the delivery's Sent be reported
// first, or the rule's pending count never comes back to zero.
func TestQueuedIsReportedBeforeSent(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(hook.Close)

	var mu sync.Mutex
	var order []string
	n := &Notifier{
		Client: hook.Client(), Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MaxAttempts: 1,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Report: func(rule string, o Outcome) {
			if o.Kind == Queued {
				time.Sleep(20 * time.Millisecond) // a catalog write under load
			}
			mu.Lock()
			order = append(order, o.Kind+" "+o.Delivery)
			mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	rule := api.AlertRule{Name: "r", Webhook: hook.URL}
	const sends = 5
	for i := range sends {
		n.Send(ctx, rule, api.AlertPayload{Delivery: fmt.Sprint(i), Event: api.EventTest})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 2*sends
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	n.Wait()

	seen := map[string]int{}
	for i, o := range order {
		seen[o] = i
	}
	for i := range sends {
		q, okQ := seen[fmt.Sprintf("%s %d", Queued, i)]
		s, okS := seen[fmt.Sprintf("%s %d", Sent, i)]
		require.True(t, okQ && okS, "delivery %d: %v", i, order)
		require.Less(t, q, s, "delivery %d was reported sent before queued: %v", i, order)
	}
}
