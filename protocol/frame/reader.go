package frame

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"sync"

	"github.com/ferrydr/ferry/protocol"
)

// readChunk is how much of a payload is read before its buffer grows
// further: a peer that announces a large frame must send the bytes before
// the reader commits memory to them.
const readChunk = 64 << 10

// Reader reads frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	max int
	hdr [HeaderLen]byte
	buf []byte
}

// NewReader returns a Reader that refuses payloads over max bytes
// (MaxFrameDefault when max ≤ 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = MaxFrameDefault
	}
	return &Reader{r: bufio.NewReaderSize(r, readChunk), max: max}
}

// payloadPool holds the payload buffers of released Readers: a stream
// that lives for one move or one cycle otherwise grows its own from
// nothing to the largest frame (copies, fresh pages, then garbage).
var payloadPool sync.Pool

// NewPooledReader is NewReader whose payload buffer comes from (and, on
// Release, goes back to) a pool shared by such Readers. The owner calls
// Release once nothing reads from the Reader any more and no payload it
// returned is in use.
func NewPooledReader(r io.Reader, max int) *Reader {
	fr := NewReader(r, max)
	if bp, ok := payloadPool.Get().(*[]byte); ok {
		fr.buf = (*bp)[:0]
	}
	return fr
}

// Release hands the Reader's payload buffer to the pool: no payload it
// returned may be used after it, nor the Reader itself.
func (r *Reader) Release() {
	if cap(r.buf) == 0 {
		return
	}
	b := r.buf[:0]
	r.buf = nil
	payloadPool.Put(&b)
}

// Next reads one frame. The payload is valid until the next call. It
// returns io.EOF at a clean end between frames, io.ErrUnexpectedEOF inside
// one, a *SizeError for a payload over the limit (the stream is then
// unusable), and, for an error frame, TypeError with the peer's
// *protocol.Error as err.
func (r *Reader) Next() (typ uint8, payload []byte, err error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return 0, nil, err // io.EOF between frames, io.ErrUnexpectedEOF inside the header
	}
	length := binary.BigEndian.Uint32(r.hdr[:4])
	typ = r.hdr[4]
	if length == 0 {
		return 0, nil, &FormatError{Reason: "zero length (a frame has at least its type byte)"}
	}
	n := int64(length) - 1
	limit := int64(r.max)
	if typ == TypeError {
		limit = MaxErrorPayload
	}
	if n > limit {
		return 0, nil, &SizeError{Len: n, Max: limit}
	}
	payload, err = r.readPayload(int(n))
	if err != nil {
		return 0, nil, err
	}
	if typ == TypeError {
		perr, err := DecodeError(payload)
		if err != nil {
			return 0, nil, err
		}
		return TypeError, nil, perr
	}
	return typ, payload, nil
}

func (r *Reader) readPayload(n int) ([]byte, error) {
	buf := r.buf[:0]
	for len(buf) < n {
		step := min(n-len(buf), max(len(buf), readChunk))
		if cap(buf)-len(buf) < step {
			grown := make([]byte, len(buf), len(buf)+step)
			copy(grown, buf)
			buf = grown
		}
		start := len(buf)
		buf = buf[:start+step]
		if _, err := io.ReadFull(r.r, buf[start:]); err != nil {
			r.buf = buf[:0]
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	r.buf = buf[:0]
	return buf, nil
}

// DecodeError parses an error frame's payload: a JSON object
// {"code": …, "message": …} with a well-formed code.
func DecodeError(payload []byte) (*protocol.Error, error) {
	if len(payload) > MaxErrorPayload {
		return nil, &SizeError{Len: int64(len(payload)), Max: MaxErrorPayload}
	}
	var e protocol.Error
	if err := json.Unmarshal(payload, &e); err != nil {
		return nil, &FormatError{Reason: "error frame: " + err.Error()}
	}
	if !e.Code.Valid() {
		return nil, &FormatError{Reason: "error frame: malformed code " + quote(string(e.Code))}
	}
	if len(e.Message) > protocol.MaxMessageLen {
		return nil, &FormatError{Reason: "error frame: message over the limit"}
	}
	return &e, nil
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
