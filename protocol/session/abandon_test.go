package session

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// Abandon ends a session as lost, not closed: every blocked stream call on
// this side fails with a retryable *LostError wrapping the cause (Close
// would give ErrClosed, which callers take as final), and the peer sees
// the session lost as well.
func TestAbandonFailsStreamsRetryably(t *testing.T) {
	p := newPKI(t)
	c := listen(t, p.ca.ServerConfig(p.server), shortKeepalive(controllerConfig()))
	raw, err := net.Dial("tcp", c.addr())
	require.NoError(t, err)
	agent, err := Client(t.Context(), raw, shortKeepalive(agentConfig(p, true)))
	require.NoError(t, err)
	defer agent.Close()
	ctrl, err := c.next(t)
	require.NoError(t, err)

	agentSide, ctrlSide := openMany(t, agent, ctrl, 2)
	agentErrs, ctrlErrs := blocked(agentSide), blocked(ctrlSide)
	cause := errors.New("replaced")
	within(t, 5*time.Second, "Abandon", func() { ctrl.Abandon(cause) })
	expectAllFail(t, ctrlErrs, 2*len(ctrlSide), 5*time.Second)
	expectAllFail(t, agentErrs, 2*len(agentSide), 5*time.Second)

	requireLost(t, ctrl.Err())
	require.ErrorIs(t, ctrl.Err(), cause)
	require.NotErrorIs(t, ctrl.Err(), ErrClosed)
	_, err = ctrl.Open(t.Context(), protocol.KindData)
	requireLost(t, err)
	requireLost(t, agent.Err())
}
