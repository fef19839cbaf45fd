package msg

import (
	"encoding/json"
	"testing"
)

// TestViewNote: the explicit method and reason win; from an agent that
// sends only the note, the method is its first word and the reason the
// rest; a note of a method alone has no reason.
func TestViewNote(t *testing.T) {
	for _, tc := range []struct {
		req            CycleEndRequest
		method, reason string
	}{
		{CycleEndRequest{Note: "direct-read: disks read while the machine may be writing them", Method: "direct-read", Reason: "no reflink"}, "direct-read", "no reflink"},
		{CycleEndRequest{Note: "direct-read: no reflink: reflink /d.img: not supported here; disks read while the machine may be writing them"},
			"direct-read", "no reflink: reflink /d.img: not supported here; disks read while the machine may be writing them"},
		{CycleEndRequest{Note: "reflink"}, "reflink", ""},
		{CycleEndRequest{Note: "tracked-freeze: frozen 3 ms, 4096 bytes captured"}, "tracked-freeze", "frozen 3 ms, 4096 bytes captured"},
		{CycleEndRequest{}, "", ""},
	} {
		m, r := tc.req.ViewNote()
		if m != tc.method || r != tc.reason {
			t.Errorf("%+v: got (%q, %q), want (%q, %q)", tc.req, m, r, tc.method, tc.reason)
		}
	}
}

// TestCycleEndFieldsAreOptional: an older controller or agent neither
// sends nor expects method and reason; they are left out when empty.
func TestCycleEndFieldsAreOptional(t *testing.T) {
	b, err := json.Marshal(CycleEndRequest{Machine: "m", Consistency: "crash-consistent"})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"method", "reason", "note"} {
		if _, ok := fields[k]; ok {
			t.Errorf("%s sent when empty: %s", k, b)
		}
	}
	b, _ = json.Marshal(CycleEndRequest{Method: "reflink", Reason: "r"})
	var back CycleEndRequest
	if err := json.Unmarshal(b, &back); err != nil || back.Method != "reflink" || back.Reason != "r" {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}
