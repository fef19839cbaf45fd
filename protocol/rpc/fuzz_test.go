package rpc

import (
	"encoding/json"
	"testing"
)

// canon is a body as the encoder sends it (compacted, HTML-escaped), so
// that bodies compare as JSON rather than as the bytes a peer chose.
func canon(t *testing.T, b json.RawMessage) string {
	if b == nil {
		return ""
	}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatalf("accepted body is not JSON: %v", err)
	}
	return string(out)
}

// FuzzRequest: the request decoder accepts only valid requests, and what it
// accepts survives a round trip through the encoder.
func FuzzRequest(f *testing.F) {
	f.Add([]byte(`{"id":1,"method":"cycle.begin","body":{"machine":"db1","disks":[1,2]}}`))
	f.Add([]byte(`{"id":18446744073709551615,"method":"hello"}`))
	f.Add([]byte(`{"id":1,"method":"x","body":null}`))
	f.Add([]byte(`{"id":1,"method":"bad method"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Request
		if err := r.Decode(in); err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted request is invalid: %v", err)
		}
		out, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("accepted request does not encode: %v", err)
		}
		var again Request
		if err := again.Decode(out); err != nil {
			t.Fatalf("re-encoded request %s does not decode: %v", out, err)
		}
		if again.ID != r.ID || again.Method != r.Method || canon(t, again.Body) != canon(t, r.Body) {
			t.Fatalf("round trip changed %+v into %+v", r, again)
		}
	})
}

// FuzzResponse: the same for responses, including the error envelope.
func FuzzResponse(f *testing.F) {
	f.Add([]byte(`{"id":1,"body":{"sum":42}}`))
	f.Add([]byte(`{"id":2,"error":{"code":"not_found","message":"machine \"db1\": not found"}}`))
	f.Add([]byte(`{"id":3,"error":{"code":"Bad","message":""}}`))
	f.Add([]byte(`{"id":4,"error":{"code":"busy","message":"x"},"body":1}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var r Response
		if err := r.Decode(in); err != nil {
			return
		}
		out, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("accepted response does not encode: %v", err)
		}
		var again Response
		if err := again.Decode(out); err != nil {
			t.Fatalf("re-encoded response %s does not decode: %v", out, err)
		}
		if again.ID != r.ID || (again.Error == nil) != (r.Error == nil) || canon(t, again.Body) != canon(t, r.Body) ||
			(r.Error != nil && *again.Error != *r.Error) {
			t.Fatalf("round trip changed %+v into %+v", r, again)
		}
	})
}
