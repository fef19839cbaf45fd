package protocol

import (
	"bytes"
	"testing"
)

// FuzzBanner: any bytes give a banner or an error, never a panic; a banner
// that parses re-encodes to exactly the bytes read (one spelling per banner).
func FuzzBanner(f *testing.F) {
	f.Add(Banner{Versions: VersionRange{1, 1}, Name: "agent", Software: "dev"}.Append(nil))
	f.Add(Banner{Versions: VersionRange{2, 65535}, Name: "controller", Software: "v1.0.0-3-gabc"}.Append(nil))
	f.Add([]byte{0, 16, 'F', 'E', 'R', 'R', 'Y', ' ', '1', '-', '1', ' ', 'a', ' ', 'b', '\n'})
	f.Add([]byte{0xFF, 0xFF, 'x'})
	f.Add([]byte("\x00\x10HTTP/1.1 200 OK\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		b, err := ReadBanner(r)
		if err != nil {
			return
		}
		used := in[:len(in)-r.Len()]
		if got := b.Append(nil); !bytes.Equal(got, used) {
			t.Fatalf("banner %+v re-encodes to %q, read from %q", b, got, used)
		}
	})
}

// FuzzVerdict: a verdict that parses survives a round trip unchanged.
func FuzzVerdict(f *testing.F) {
	f.Add(Verdict{Version: 1}.Append(nil))
	f.Add(Verdict{Err: &Error{Code: CodeVersionMismatch, Message: "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1"}}.Append(nil))
	f.Add([]byte("\x00\x08NO busy \n"))
	f.Add([]byte("\x00\x04OK 0\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := ReadVerdict(bytes.NewReader(in))
		if err != nil {
			return
		}
		again, err := ReadVerdict(bytes.NewReader(v.Append(nil)))
		if err != nil {
			t.Fatalf("re-encoded verdict %+v does not parse: %v", v, err)
		}
		if again.Version != v.Version || (again.Err == nil) != (v.Err == nil) ||
			(v.Err != nil && *again.Err != *v.Err) {
			t.Fatalf("round trip changed %+v into %+v", v, again)
		}
	})
}
