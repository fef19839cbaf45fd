package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBannerBytes(t *testing.T) {
	b := Banner{Versions: VersionRange{1, 3}, Name: "agent", Software: "v0.4.1"}
	var buf bytes.Buffer
	require.NoError(t, WriteBanner(&buf, b))
	text := "FERRY 1-3 agent v0.4.1\n"
	want := append([]byte{0, byte(len(text))}, text...)
	require.Equal(t, want, buf.Bytes(), "the banner bytes are frozen (docs/protocol.md)")

	got, err := ReadBanner(&buf)
	require.NoError(t, err)
	require.Equal(t, b, got)
}

func TestBannerRefusesMalformed(t *testing.T) {
	rec := func(text string) *bytes.Reader {
		return bytes.NewReader(append(binary.BigEndian.AppendUint16(nil, uint16(len(text))), text...))
	}
	for _, text := range []string{
		"FERRY 1-1 agent dev",         // no newline
		"HTTP/1.1 200 OK\n",           // not ferry
		"FERRY 1-1 agent\n",           // missing field
		"FERRY 1-1 agent dev extra\n", // extra field
		"FERRY 01-1 agent dev\n",      // leading zero
		"FERRY 0-1 agent dev\n",       // min 0
		"FERRY 2-1 agent dev\n",       // min > max
		"FERRY 1-70000 agent dev\n",   // > u16
		"FERRY 1 agent dev\n",         // no range
		"FERRY +1-1 agent dev\n",      // sign
		"FERRY 1-1 Agent dev\n",       // upper-case name
		"FERRY 1-1 agent  dev\n",      // double space
	} {
		_, err := ReadBanner(rec(text))
		var be *BannerError
		require.ErrorAs(t, err, &be, "%q", text)
		require.ErrorIs(t, err, ErrInvalid, "%q", text)
	}

	_, err := ReadBanner(bytes.NewReader([]byte{0xFF, 0xFF}))
	require.ErrorIs(t, err, ErrTooLarge, "a length over the limit is refused before reading on")
	_, err = ReadBanner(bytes.NewReader([]byte{0, 0}))
	require.ErrorIs(t, err, ErrInvalid)
	_, err = ReadBanner(bytes.NewReader(nil))
	require.ErrorIs(t, err, io.EOF)
	_, err = ReadBanner(bytes.NewReader([]byte{0, 10, 'F'}))
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

func TestWriteBannerValidates(t *testing.T) {
	for _, b := range []Banner{
		{Versions: VersionRange{0, 1}, Name: "agent", Software: "dev"},
		{Versions: VersionRange{1, 1}, Name: "", Software: "dev"},
		{Versions: VersionRange{1, 1}, Name: "agent x", Software: "dev"},
		{Versions: VersionRange{1, 1}, Name: "agent", Software: "has space"},
		{Versions: VersionRange{1, 1}, Name: "agent", Software: strings.Repeat("v", MaxSoftware+1)},
	} {
		require.Error(t, WriteBanner(io.Discard, b), "%+v", b)
	}
	require.Equal(t, "v1.2_dirty_", SanitizeSoftware("v1.2 dirty\n"))
	require.Equal(t, "unknown", SanitizeSoftware(""))
	require.Len(t, SanitizeSoftware(strings.Repeat("x", 100)), MaxSoftware)
}

func TestVerdict(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteVerdict(&buf, Verdict{Version: 1}))
	require.Equal(t, append([]byte{0, 5}, "OK 1\n"...), buf.Bytes())
	v, err := ReadVerdict(&buf)
	require.NoError(t, err)
	require.Equal(t, Verdict{Version: 1}, v)

	msg := "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1"
	require.NoError(t, WriteVerdict(&buf, Verdict{Err: &Error{Code: CodeVersionMismatch, Message: msg}}))
	require.True(t, strings.HasPrefix(buf.String()[2:], "NO version_mismatch ferry: protocol"))
	v, err = ReadVerdict(&buf)
	require.NoError(t, err)
	require.Equal(t, CodeVersionMismatch, v.Err.Code)
	require.Equal(t, msg, v.Err.Message)

	// A long multi-line message is flattened and cut to fit the record.
	long := strings.Repeat("line\n", 1000)
	require.NoError(t, WriteVerdict(&buf, Verdict{Err: &Error{Code: CodeUnavailable, Message: long}}))
	require.LessOrEqual(t, buf.Len()-2, MaxVerdictLen)
	v, err = ReadVerdict(&buf)
	require.NoError(t, err)
	require.NotContains(t, v.Err.Message, "\n")

	require.Error(t, WriteVerdict(io.Discard, Verdict{}))
	for _, text := range []string{"OK 0\n", "OK\n", "NO x\n", "NO Bad msg\n", "MAYBE 1\n", "OK 1"} {
		_, err := ReadVerdict(bytes.NewReader(append(binary.BigEndian.AppendUint16(nil, uint16(len(text))), text...)))
		require.True(t, errors.Is(err, ErrInvalid), "%q: %v", text, err)
	}
}
