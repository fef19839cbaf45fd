package api

import "time"

// Alert events (ferry alerts add --on).
const (
	EventRPOBreach   = "rpo-breach"   // a machine's RPO passed its threshold (health critical); resolves
	EventJobFailed   = "job-failed"   // a job ended failed or partial; no resolution
	EventAgentLost   = "agent-lost"   // an agent has been disconnected too long; resolves
	EventDrillFailed = "drill-failed" // a drill run failed; no resolution
	EventDiskLow     = "disk-low"     // the controller's free space is near its reserve; resolves
	EventTest        = "test"         // ferry alerts test
)

// AlertEvents are the events a rule can subscribe to, in the order shown.
var AlertEvents = []string{EventRPOBreach, EventJobFailed, EventAgentLost, EventDrillFailed, EventDiskLow}

// Alert delivery statuses (AlertPayload.Status).
const (
	AlertFiring   = "firing"
	AlertResolved = "resolved"
)

// AlertRule is a webhook and the events sent to it.
type AlertRule struct {
	Name    string    `json:"name"`
	Webhook string    `json:"webhook"`
	On      []string  `json:"on"` // empty in a request: every event
	Created time.Time `json:"created"`
}

// AlertStatus is how a rule's deliveries went.
type AlertStatus struct {
	Sent           int64      `json:"sent"`            // deliveries the webhook accepted (2xx)
	FailedAttempts int64      `json:"failed_attempts"` // attempts refused or unreachable (each retry counts)
	Dropped        int64      `json:"dropped"`         // deliveries given up after every retry
	Pending        int        `json:"pending"`         // deliveries queued or retrying now
	LastSent       *time.Time `json:"last_sent,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	LastErrorAt    *time.Time `json:"last_error_at,omitempty"`
}

// Alert is a rule with its delivery status.
type Alert struct {
	AlertRule
	Status AlertStatus `json:"status"`
}

// AlertPayload is the JSON body POSTed to a webhook (docs/observability.md).
type AlertPayload struct {
	Version    int       `json:"version"` // 1
	Alert      string    `json:"alert"`   // the rule's name
	Event      string    `json:"event"`
	Status     string    `json:"status"`   // firing, resolved (test: firing)
	Incident   string    `json:"incident"` // stable per incident: "rpo-breach/web1"; a job event's is the job's
	Subject    string    `json:"subject"`  // the machine, agent, job or "controller"
	Summary    string    `json:"summary"`
	Detail     string    `json:"detail,omitempty"`
	Started    time.Time `json:"started"`    // when the incident opened
	Time       time.Time `json:"time"`       // when this notification was made
	Controller string    `json:"controller"` // the controller's host name
	Delivery   string    `json:"delivery"`   // unique per notification, the same across its retries
}
