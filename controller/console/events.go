package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// keepAlive is how often an idle event stream sends a comment, so proxies
// and the browser keep it open while a step runs long.
const keepAlive = 15 * time.Second

// jobEvents streams a job as server-sent events: an "job" event with the
// job's JSON on every change (the first is its state now), then "end" when
// it reaches a final state, after which the page stops listening.
func (c *Console) jobEvents(w http.ResponseWriter, r *http.Request, ss *session) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch, err := c.cfg.Backend.WatchJob(r.Context(), r.PathValue("id"))
	if err != nil {
		c.failed(w, ss, err)
		return
	}
	// The listener's request read timeout does not cut the stream (the
	// server lifts the read deadline once the request is read); a write
	// timeout would, so the admin listener has none (TestConsole/long-stream).
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n") // reconnect soon if the stream breaks
	fl.Flush()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case j, open := <-ch:
			if !open {
				fmt.Fprint(w, "event: end\ndata: {}\n\n")
				fl.Flush()
				return
			}
			b, err := json.Marshal(j)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil {
				return
			}
			fl.Flush()
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case <-r.Context().Done():
			return
		}
	}
}
