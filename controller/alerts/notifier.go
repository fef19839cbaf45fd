package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// Outcome kinds a Notifier reports.
const (
	Queued  = "queued"  // a notification waits for delivery
	Sent    = "sent"    // the webhook accepted it (2xx)
	Failed  = "failed"  // one attempt failed; it will be retried
	Dropped = "dropped" // every attempt failed; given up
)

// Outcome is what happened to one notification of a rule.
type Outcome struct {
	Kind     string
	Delivery string
	Attempt  int
	Err      error // Failed and Dropped
}

// Notifier delivers notifications to webhooks: each rule's in order (a
// resolution never overtakes its firing), each retried with doubling
// waits until it is accepted or MaxAttempts have failed.
type Notifier struct {
	Client      *http.Client
	Backoff     time.Duration // the first retry's wait; doubles up to MaxBackoff
	MaxBackoff  time.Duration
	MaxAttempts int
	UserAgent   string
	Log         *slog.Logger
	// Report is told of each outcome (the controller keeps the rule's
	// status from it).
	Report func(rule string, o Outcome)

	mu     sync.Mutex
	queues map[string]chan item
	wg     sync.WaitGroup // the queues' goroutines
}

// Wait returns once every queue's goroutine has ended (their ctx ended).
// Call it after the last Send.
func (n *Notifier) Wait() { n.wg.Wait() }

type item struct {
	rule api.AlertRule
	p    api.AlertPayload
}

// queueDepth bounds a rule's waiting notifications; more are dropped
// (and reported) rather than grow without bound behind a dead webhook.
const queueDepth = 256

// Send queues p for rule's webhook; ctx bounds the queue's life (the
// controller's run).
func (n *Notifier) Send(ctx context.Context, rule api.AlertRule, p api.AlertPayload) {
	if ctx.Err() != nil {
		return // shutting down: no new queue may start
	}
	n.mu.Lock()
	if n.queues == nil {
		n.queues = map[string]chan item{}
	}
	q, ok := n.queues[rule.Name]
	if !ok {
		q = make(chan item, queueDepth)
		n.queues[rule.Name] = q
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.drain(ctx, q)
		}()
	}
	defer n.mu.Unlock()
	// Queued is reported before the queue's goroutine can see the item,
	// so its Sent never comes first (a rule's pending count would stay
	// up). Only Send adds to q, under n.mu: room seen here stays there.
	if len(q) == cap(q) {
		err := fmt.Errorf("more than %d notifications wait for %s", queueDepth, rule.Name)
		n.Log.Error("alert dropped", "alert", rule.Name, "event", p.Event, "incident", p.Incident, "err", err)
		n.Report(rule.Name, Outcome{Kind: Dropped, Delivery: p.Delivery, Err: err})
		return
	}
	n.Report(rule.Name, Outcome{Kind: Queued, Delivery: p.Delivery})
	q <- item{rule: rule, p: p}
}

func (n *Notifier) drain(ctx context.Context, q chan item) {
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-q:
			n.deliver(ctx, it)
		}
	}
}

// deliver tries one notification until it is accepted or given up.
func (n *Notifier) deliver(ctx context.Context, it item) {
	wait := n.Backoff
	for attempt := 1; ; attempt++ {
		err := n.Post(ctx, it.rule.Webhook, it.p)
		if err == nil {
			n.Log.Info("alert delivered", "alert", it.rule.Name, "event", it.p.Event, "status", it.p.Status, "incident", it.p.Incident, "attempt", attempt)
			n.Report(it.rule.Name, Outcome{Kind: Sent, Delivery: it.p.Delivery, Attempt: attempt})
			return
		}
		if ctx.Err() != nil {
			return // shutting down: the delivery is lost with the queue
		}
		if attempt >= n.MaxAttempts {
			n.Log.Error("alert given up", "alert", it.rule.Name, "event", it.p.Event, "incident", it.p.Incident, "attempts", attempt, "err", err)
			n.Report(it.rule.Name, Outcome{Kind: Dropped, Delivery: it.p.Delivery, Attempt: attempt, Err: err})
			return
		}
		n.Log.Warn("alert delivery failed; retrying", "alert", it.rule.Name, "event", it.p.Event, "incident", it.p.Incident,
			"attempt", attempt, "retry_in", wait, "err", err)
		n.Report(it.rule.Name, Outcome{Kind: Failed, Delivery: it.p.Delivery, Attempt: attempt, Err: err})
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, n.MaxBackoff)
	}
}

// Post makes one delivery attempt: the payload as JSON, accepted on 2xx.
func (n *Notifier) Post(ctx context.Context, webhook string, p api.AlertPayload) error {
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, webhook, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", n.UserAgent)
	req.Header.Set("X-Ferry-Event", p.Event)
	req.Header.Set("X-Ferry-Delivery", p.Delivery)
	resp, err := n.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		msg := strings.TrimSpace(string(b))
		if msg != "" {
			msg = ": " + msg
		}
		return fmt.Errorf("webhook answered HTTP %d%s", resp.StatusCode, msg)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return nil
}
