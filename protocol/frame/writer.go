package frame

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/ferrydr/ferry/protocol"
)

// Writer writes frames to a stream through a buffer; call Flush to send.
// It is not safe for concurrent use.
type Writer struct {
	w *bufio.Writer
}

// scratchPool holds WriteAppend's encoding buffers for every Writer: most
// streams live for one move or one cycle, and a buffer of their own grew
// from nothing each time (copies and fresh pages to fault in, then
// garbage) up to the largest frame.
var scratchPool = sync.Pool{New: func() any { return new([]byte) }}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, 64<<10)}
}

// Write writes one frame. typ must not be TypeError (use WriteError).
// Payload limits are the message layer's; Write refuses only what the
// length field cannot describe.
func (w *Writer) Write(typ uint8, payload []byte) error {
	if typ == TypeError {
		return &FormatError{Reason: "type 0 is the error frame; use WriteError"}
	}
	if int64(len(payload)) > maxWire {
		return &SizeError{Len: int64(len(payload)), Max: maxWire}
	}
	var hdr [HeaderLen]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(payload)+1))
	hdr[4] = typ
	if _, err := w.w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.w.Write(payload)
	return err
}

// WriteAppend writes one frame whose payload fn appends to the slice it is
// given, in a pooled buffer: encoding needs no allocation once the pool's
// buffers have grown to the largest frame.
func (w *Writer) WriteAppend(typ uint8, fn func(dst []byte) []byte) error {
	if typ == TypeError {
		return &FormatError{Reason: "type 0 is the error frame; use WriteError"}
	}
	bp := scratchPool.Get().(*[]byte)
	buf := fn(append((*bp)[:0], 0, 0, 0, 0, typ))
	defer func() {
		// After Write the bufio.Writer has copied buf or written it
		// through: the buffer is free for the next frame.
		*bp = buf[:0]
		scratchPool.Put(bp)
	}()
	n := int64(len(buf) - HeaderLen)
	if n > maxWire {
		return &SizeError{Len: n, Max: maxWire}
	}
	binary.BigEndian.PutUint32(buf[:4], uint32(n+1))
	_, err := w.w.Write(buf)
	return err
}

// WriteError writes err as an error frame (protocol.AsError decides the
// code) and flushes. The peer's Reader returns it as a *protocol.Error; the
// stream should be closed after it.
func (w *Writer) WriteError(err error) error {
	if _, werr := w.w.Write(AppendError(nil, err)); werr != nil {
		return werr
	}
	return w.w.Flush()
}

// AppendError appends err as a whole error frame (header included) to dst,
// for a sender that writes it with a single write of its own.
func AppendError(dst []byte, err error) []byte {
	payload, merr := EncodeError(protocol.AsError(err))
	if merr != nil {
		payload = []byte(`{"code":"internal","message":"unencodable error"}`)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)+1))
	dst = append(dst, TypeError)
	return append(dst, payload...)
}

// EncodeError is the payload of an error frame for e.
func EncodeError(e *protocol.Error) ([]byte, error) {
	if e == nil {
		e = &protocol.Error{Code: protocol.CodeInternal, Message: "nil error"}
	}
	payload, err := json.Marshal(e.Truncated())
	if err != nil {
		return nil, fmt.Errorf("frame: encode error frame: %w", err)
	}
	return payload, nil
}

// Append appends one frame (header and payload) to dst, for callers that
// send a frame with a single write of their own. typ must not be
// TypeError and the payload must fit the length field.
func Append(dst []byte, typ uint8, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)+1))
	dst = append(dst, typ)
	return append(dst, payload...)
}

// Flush sends buffered frames.
func (w *Writer) Flush() error { return w.w.Flush() }

// Buffered reports the bytes waiting for Flush.
func (w *Writer) Buffered() int { return w.w.Buffered() }
