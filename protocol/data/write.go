package data

import (
	"fmt"

	"github.com/ferrydr/ferry/protocol/frame"
)

// Message is what every frame type of this package implements.
type Message interface {
	Type() uint8
	Validate() error
	Append(dst []byte) []byte
	Decode(payload []byte) error
}

var (
	_ Message = (*Manifest)(nil)
	_ Message = (*Need)(nil)
	_ Message = (*Batch)(nil)
	_ Message = (*Ack)(nil)
	_ Message = (*Error)(nil)
	_ Message = (*HashRun)(nil)
	_ Message = (*End)(nil)
	_ Message = (*Barrier)(nil)
)

// WriteFrame validates m and writes it as a frame of type typ through w's
// reusable buffer (call w.Flush to send). When m says its own type
// (Message), typ must match it.
func WriteFrame(w *frame.Writer, typ uint8, m interface{ Append([]byte) []byte }) error {
	if t, ok := m.(interface{ Type() uint8 }); ok && t.Type() != typ {
		return invalid("frame", "a %T is frame type %d, not %d", m, t.Type(), typ)
	}
	if v, ok := m.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	if err := w.WriteAppend(typ, m.Append); err != nil {
		return fmt.Errorf("data: write frame type %d: %w", typ, err)
	}
	return nil
}
