package api

import (
	"encoding/json"
	"time"
)

// Audit results.
const (
	AuditOK    = "ok"
	AuditError = "error"
)

// AuditEntry is one mutating admin call as the audit trail keeps it.
type AuditEntry struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	Who    string    `json:"who"` // "uid:0", "token:sha256:1a2b3c4d", a console session's token identity
	Via    string    `json:"via"` // "socket", "tls", "console"
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// Targets are the names the call acted on: path values and the
	// machine, target, agent or name fields of its body.
	Targets []string `json:"targets"`
	// Body is the request body with every secret replaced by "[redacted]".
	Body    json.RawMessage `json:"body,omitempty"`
	Result  string          `json:"result"` // ok or error
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Job     string          `json:"job,omitempty"` // the job the call started
}
