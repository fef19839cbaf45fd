package protocol

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestErrorMatchesSentinelOfItsCode(t *testing.T) {
	for _, e := range codeTable {
		wire := &Error{Code: e.code, Message: "from the peer"}
		require.ErrorIs(t, wire, e.err, "code %s", e.code)
		require.ErrorIs(t, fmt.Errorf("call: %w", wire), e.err)
		for _, other := range codeTable {
			if other.code != e.code {
				require.NotErrorIs(t, wire, other.err, "code %s must not match %s", e.code, other.code)
			}
		}
	}
	unknown := &Error{Code: "quota_exceeded", Message: "newer peer"}
	for _, e := range codeTable {
		require.NotErrorIs(t, unknown, e.err)
	}
	require.False(t, Retryable(unknown))
	require.ErrorIs(t, unknown, &Error{Code: "quota_exceeded"})
}

func TestAsError(t *testing.T) {
	cases := []struct {
		err  error
		code Code
		msg  string
	}{
		{Errorf(CodeNotFound, "machine %q", "db1"), CodeNotFound, `machine "db1"`},
		{fmt.Errorf("open disk: %w", ErrNotFound), CodeNotFound, "open disk: not found"},
		{fmt.Errorf("lookup: %w", Errorf(CodeConflict, "job 7 runs")), CodeConflict, "lookup: job 7 runs"},
		{fmt.Errorf("wait: %w", context.Canceled), CodeCancelled, "wait: context canceled"},
		{context.DeadlineExceeded, CodeUnavailable, "context deadline exceeded"},
		{errors.New("disk on fire"), CodeInternal, "disk on fire"},
		{&VersionMismatchError{Local: VersionRange{2, 3}, Peer: VersionRange{1, 1}, LocalName: "controller", PeerName: "agent"},
			CodeVersionMismatch, "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1"},
		{&Error{Code: "Bad Code!", Message: "x"}, CodeInternal, "x"},
	}
	for _, c := range cases {
		got := AsError(c.err)
		require.Equal(t, c.code, got.Code, "%v", c.err)
		require.Equal(t, c.msg, got.Message)
	}
	require.Nil(t, AsError(nil))

	long := AsError(errors.New(strings.Repeat("é", MaxMessageLen)))
	require.LessOrEqual(t, len(long.Message), MaxMessageLen)
	require.True(t, strings.HasSuffix(long.Message, "é"), "cut on a rune boundary")
}

func TestRetryable(t *testing.T) {
	require.True(t, Retryable(Errorf(CodeUnavailable, "restarting")))
	require.True(t, Retryable(fmt.Errorf("x: %w", ErrBusy)))
	require.True(t, Retryable(context.DeadlineExceeded))
	require.False(t, Retryable(Errorf(CodeInvalid, "bad")))
	require.False(t, Retryable(errors.New("plain")))
	require.False(t, Retryable(nil))
	require.False(t, Retryable(&VersionMismatchError{}))
	require.False(t, Retryable(context.Canceled))
}

func TestNegotiate(t *testing.T) {
	cases := []struct {
		local, peer VersionRange
		want        uint16
	}{
		{VersionRange{1, 1}, VersionRange{1, 1}, 1},
		{VersionRange{1, 3}, VersionRange{2, 5}, 3},
		{VersionRange{2, 5}, VersionRange{1, 3}, 3},
		{VersionRange{1, 4}, VersionRange{2, 2}, 2},
		{VersionRange{3, 3}, VersionRange{1, 3}, 3},
	}
	for _, c := range cases {
		got, err := Negotiate(c.local, c.peer, "a", "b")
		require.NoError(t, err)
		require.Equal(t, c.want, got, "%v with %v", c.local, c.peer)
	}
	_, err := Negotiate(VersionRange{2, 3}, VersionRange{1, 1}, "controller", "agent")
	var vm *VersionMismatchError
	require.ErrorAs(t, err, &vm)
	require.ErrorIs(t, err, ErrVersionMismatch)
	require.Equal(t, "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1", err.Error())
	_, err = Negotiate(VersionRange{1, 1}, VersionRange{0, 0}, "a", "b")
	require.ErrorIs(t, err, ErrVersionMismatch, "an invalid range never overlaps")
}

func TestKindNames(t *testing.T) {
	want := map[StreamKind]string{1: "control", 2: "data", 3: "restore", 4: "enrol", 5: "hashes", 6: "log"}
	for k, name := range want {
		require.True(t, k.Known())
		require.Equal(t, name, k.String())
	}
	require.False(t, StreamKind(0).Known())
	require.False(t, StreamKind(7).Known())
	require.Equal(t, "kind(200)", StreamKind(200).String())
}
