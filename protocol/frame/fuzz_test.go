package frame

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/ferrydr/ferry/protocol"
)

// FuzzReader: arbitrary bytes yield frames, a clean end or an error, never
// a panic or a payload over the limit; frames re-encode to the bytes read.
func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_ = w.Write(1, []byte("hello"))
	_ = w.Write(2, nil)
	_ = w.WriteError(protocol.Errorf(protocol.CodeBusy, "later"))
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 0, 1})
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF, 1})
	f.Add([]byte{0, 0, 0, 3, 0, '{', '}'})
	const max = 4096
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), max)
		var out bytes.Buffer
		w := NewWriter(&out)
		sawError := false
		for {
			typ, payload, err := r.Next()
			if err != nil {
				var pe *protocol.Error
				if errors.As(err, &pe) {
					if typ != TypeError || !pe.Code.Valid() {
						t.Fatalf("error frame gave type %d code %q", typ, pe.Code)
					}
					sawError = true
					continue
				}
				if err == io.EOF && !sawError {
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(out.Bytes(), in) {
						t.Fatalf("frames re-encode to %q, read from %q", out.Bytes(), in)
					}
				}
				return
			}
			if len(payload) > max {
				t.Fatalf("payload of %d over limit %d", len(payload), max)
			}
			if err := w.Write(typ, payload); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzErrorPayload: the error frame's JSON decoder accepts only well-formed
// errors, and what it accepts survives a round trip.
func FuzzErrorPayload(f *testing.F) {
	f.Add([]byte(`{"code":"not_found","message":"machine db1"}`))
	f.Add([]byte(`{"code":"","message":""}`))
	f.Add([]byte(`{"code":"x","message":"\u0000\ud800"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		e, err := DecodeError(in)
		if err != nil {
			return
		}
		payload, err := EncodeError(e)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeError(payload)
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", e, err)
		}
		if *again != *e {
			t.Fatalf("round trip changed %+v into %+v", e, again)
		}
	})
}
