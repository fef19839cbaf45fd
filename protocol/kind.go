package protocol

import "strconv"

// StreamKind is the first byte of every yamux stream; it says what the
// stream carries. The list is append-only: a number, once released, keeps
// its meaning forever, and a peer that does not know a kind refuses the
// stream (the session lives on).
type StreamKind uint8

const (
	KindControl StreamKind = 1 // request/response calls (protocol/rpc), either direction
	KindData    StreamKind = 2 // agent → controller: manifests and block batches (protocol/data)
	KindRestore StreamKind = 3 // controller → agent: blocks to apply (protocol/data)
	KindEnrol   StreamKind = 4 // agent → controller without a certificate: enrolment calls (protocol/rpc)
	KindHashes  StreamKind = 5 // agent → controller: block hashes for a resync (protocol/data)
	KindLog     StreamKind = 6 // agent → controller: log records, one JSON object per frame
)

var kindNames = [...]string{
	KindControl: "control",
	KindData:    "data",
	KindRestore: "restore",
	KindEnrol:   "enrol",
	KindHashes:  "hashes",
	KindLog:     "log",
}

// Known reports whether this build knows k.
func (k StreamKind) Known() bool { return int(k) < len(kindNames) && kindNames[k] != "" }

func (k StreamKind) String() string {
	if k.Known() {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}
