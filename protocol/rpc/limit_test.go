package rpc

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// TestServeStreamLimitRefusesLargeRequest: a request frame announced over
// the stream's limit is answered with too_large at once, from its header,
// before the caller sends the payload.
func TestServeStreamLimitRefusesLargeRequest(t *testing.T) {
	agent, ctrl := sessions(t, false, nil)
	serveErr := make(chan error, 1)
	go func() {
		st, err := ctrl.Accept(context.Background())
		if err != nil {
			serveErr <- err
			return
		}
		serveErr <- ServeStreamLimit(context.Background(), st, mathMux().Serve, MaxEnrolFrame)
	}()
	st, err := agent.Open(t.Context(), protocol.KindEnrol)
	require.NoError(t, err)
	var hdr [frame.HeaderLen]byte
	binary.BigEndian.PutUint32(hdr[:4], MaxEnrolFrame+2) // type byte + one byte over
	hdr[4] = FrameRequest
	_, err = st.Write(hdr[:])
	require.NoError(t, err)
	_, _, err = frame.NewReader(st, MaxFrame).Next()
	require.ErrorIs(t, err, protocol.ErrTooLarge, "the caller learns why")
	require.ErrorIs(t, <-serveErr, protocol.ErrTooLarge)
}
