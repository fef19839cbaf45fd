package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/protocol"
	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640 KB: several read chunks
	require.NoError(t, w.Write(1, []byte("hello")))
	require.NoError(t, w.Write(2, nil))
	require.NoError(t, w.Write(3, big))
	require.NoError(t, w.WriteAppend(4, func(dst []byte) []byte { return append(dst, "appended"...) }))
	require.NoError(t, w.Flush())

	require.Equal(t, []byte{0, 0, 0, 6, 1, 'h', 'e', 'l', 'l', 'o'}, buf.Bytes()[:10], "layout: u32 BE length of type+payload, type, payload")

	r := NewReader(&buf, 1<<20)
	for _, want := range []struct {
		typ     uint8
		payload []byte
	}{{1, []byte("hello")}, {2, []byte{}}, {3, big}, {4, []byte("appended")}} {
		typ, payload, err := r.Next()
		require.NoError(t, err)
		require.Equal(t, want.typ, typ)
		require.Equal(t, want.payload, payload)
	}
	_, _, err := r.Next()
	require.Equal(t, io.EOF, err, "clean end between frames")
}

func TestLimitCheckedBeforeReading(t *testing.T) {
	// A header announcing 1 GiB followed by nothing: refused from the header
	// alone, with no attempt to read or allocate the payload.
	hdr := binary.BigEndian.AppendUint32(nil, 1<<30)
	hdr = append(hdr, 3)
	r := NewReader(bytes.NewReader(hdr), 1<<20)
	_, _, err := r.Next()
	var se *SizeError
	require.ErrorAs(t, err, &se)
	require.ErrorIs(t, err, ErrTooLarge)
	require.ErrorIs(t, err, protocol.ErrTooLarge)
	require.Equal(t, int64(1<<30-1), se.Len)

	// Exactly at the limit is fine.
	var buf bytes.Buffer
	w := NewWriter(&buf)
	require.NoError(t, w.Write(1, make([]byte, 100)))
	require.NoError(t, w.Flush())
	_, p, err := NewReader(&buf, 100).Next()
	require.NoError(t, err)
	require.Len(t, p, 100)
}

func TestTruncatedAndMalformed(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	require.NoError(t, w.Write(1, []byte("0123456789")))
	require.NoError(t, w.Flush())
	full := buf.Bytes()
	for cut := 1; cut < len(full); cut++ {
		_, _, err := NewReader(bytes.NewReader(full[:cut]), 0).Next()
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "cut at %d", cut)
	}
	_, _, err := NewReader(bytes.NewReader([]byte{0, 0, 0, 0, 1}), 0).Next()
	require.ErrorIs(t, err, protocol.ErrInvalid, "zero length")
	require.Error(t, w.Write(TypeError, []byte("{}")), "type 0 only through WriteError")
}

// A lying header must not make the reader allocate what it announced: the
// buffer grows only as bytes arrive.
func TestNoAllocationForAnnouncedBytes(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, 8<<20)
	hdr = append(hdr, 1)
	r := NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 1000))), 16<<20)
	_, _, err := r.Next()
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.LessOrEqual(t, cap(r.buf), 2*readChunk)
}

func TestErrorFrame(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	require.NoError(t, w.Write(1, []byte("before")))
	require.NoError(t, w.WriteError(protocol.Errorf(protocol.CodeUnauthorized, "stream kind data needs a client certificate")))
	// WriteError flushes by itself.
	r := NewReader(&buf, 0)
	_, _, err := r.Next()
	require.NoError(t, err)
	typ, payload, err := r.Next()
	require.Equal(t, TypeError, typ)
	require.Nil(t, payload)
	var pe *protocol.Error
	require.ErrorAs(t, err, &pe)
	require.ErrorIs(t, err, protocol.ErrUnauthorized)
	require.Equal(t, "stream kind data needs a client certificate", pe.Message)

	// Plain errors travel with the code AsError gives them.
	buf.Reset()
	require.NoError(t, w.WriteError(errors.New("disk on fire")))
	_, _, err = NewReader(&buf, 0).Next()
	require.ErrorIs(t, err, protocol.ErrInternal)

	// The worst-case message (every byte escaped) still fits the limit.
	worst := &protocol.Error{Code: protocol.CodeFailedPrecondition, Message: strings.Repeat("\x01", 10000)}
	payload, err = EncodeError(worst)
	require.NoError(t, err)
	require.LessOrEqual(t, len(payload), MaxErrorPayload)
	got, err := DecodeError(payload)
	require.NoError(t, err)
	require.Len(t, got.Message, protocol.MaxMessageLen)

	for _, bad := range []string{`{}`, `{"code":"Not Valid"}`, `[1]`, `{"code":"x"} trailing`} {
		_, err := DecodeError([]byte(bad))
		require.ErrorIs(t, err, protocol.ErrInvalid, bad)
	}
}

func BenchmarkWriteRead(b *testing.B) {
	payload := make([]byte, 1<<20)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	r := NewReader(&buf, 0)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if err := w.WriteAppend(1, func(dst []byte) []byte { return append(dst, payload...) }); err != nil {
			b.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		if _, _, err := r.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteAppendPerStream: a Writer per stream, as a move or a
// cycle opens one, each writing a few large frames (a move's batches of
// compressed blocks).
func BenchmarkWriteAppendPerStream(b *testing.B) {
	block := make([]byte, 40<<10)
	b.SetBytes(4 * 64 * int64(len(block)))
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(io.Discard)
		for range 4 {
			err := w.WriteAppend(1, func(dst []byte) []byte {
				for range 64 {
					dst = append(dst, block...)
				}
				return dst
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPooledReaderAfterRelease: a Reader taking a released Reader's buffer
// reads its own frames, whole and exact, whatever the buffer held.
func TestPooledReaderAfterRelease(t *testing.T) {
	big, small := bytes.Repeat([]byte{0xAA}, 300<<10), bytes.Repeat([]byte{0x55}, 1000)
	for range 3 {
		var stream bytes.Buffer
		w := NewWriter(&stream)
		require.NoError(t, w.Write(7, big))
		require.NoError(t, w.Write(8, small))
		require.NoError(t, w.Flush())
		r := NewPooledReader(&stream, 1<<20)
		typ, p, err := r.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(7), typ)
		require.Equal(t, big, p)
		typ, p, err = r.Next()
		require.NoError(t, err)
		require.Equal(t, uint8(8), typ)
		require.Equal(t, small, p)
		_, _, err = r.Next()
		require.ErrorIs(t, err, io.EOF)
		r.Release()
		r.Release() // twice is harmless
	}
}
