package session

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// TestMaxStreamsRefusesExcessAsBusy: with MaxStreams 2, a third stream
// while two are open is refused with code busy and the session lives on; a
// stream closed by both sides frees its place.
func TestMaxStreamsRefusesExcessAsBusy(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.MaxStreams = 2
	agent, ctrl := pair(t, agentConfig(p, true), ctrlCfg, p)
	var held []*Stream
	for range 2 {
		st, err := agent.Open(t.Context(), protocol.KindData)
		require.NoError(t, err)
		got, err := ctrl.Accept(t.Context())
		require.NoError(t, err)
		held = append(held, st, got)
	}
	third, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	within(t, 10*time.Second, "the refusal", func() { _, _, err = frame.NewReader(third, 0).Next() })
	require.ErrorIs(t, err, protocol.ErrBusy)
	require.NoError(t, third.Close())
	require.NoError(t, ctrl.Err(), "a refused stream does not end the session")

	for _, st := range held[:2] { // both ends of the first stream
		require.NoError(t, st.Close())
	}
	require.Eventually(t, func() bool { return ctrl.NumStreams() < 2 }, 10*time.Second, 10*time.Millisecond)
	st, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	got, err := ctrl.Accept(t.Context())
	require.NoError(t, err, "a place was freed")
	require.NoError(t, got.Close())
	require.NoError(t, st.Close())
}

// TestEndOnExcessEndsSession: a peer that opens one stream past the cap of
// an EndOnExcess session loses the session; the controller's side records
// ErrStreamLimit.
func TestEndOnExcessEndsSession(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.MaxStreams = 2
	ctrlCfg.EndOnExcess = true
	agent, ctrl := pair(t, agentConfig(p, false), ctrlCfg, p)
	for range 2 {
		_, err := agent.Open(t.Context(), protocol.KindEnrol)
		require.NoError(t, err)
		_, err = ctrl.Accept(t.Context())
		require.NoError(t, err)
	}
	require.NoError(t, ctrl.Err(), "two streams are within the cap")
	_, _ = agent.Open(t.Context(), protocol.KindEnrol) // may fail already
	within(t, 10*time.Second, "the end of the session", func() { <-ctrl.Done() })
	require.ErrorIs(t, ctrl.Err(), ErrStreamLimit)
	within(t, 10*time.Second, "the peer's end", func() { <-agent.Done() })
	requireLost(t, agent.Err())
}

// TestMaxLifetimeEndsSession: a session ends MaxLifetime after it was
// established, with ErrLifetime; open streams fail.
func TestMaxLifetimeEndsSession(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.MaxLifetime = 500 * time.Millisecond
	start := time.Now()
	agent, ctrl := pair(t, agentConfig(p, false), ctrlCfg, p)
	st, err := agent.Open(t.Context(), protocol.KindEnrol)
	require.NoError(t, err)
	within(t, 10*time.Second, "the end of the session", func() { <-ctrl.Done() })
	require.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond)
	require.ErrorIs(t, ctrl.Err(), ErrLifetime)
	within(t, 10*time.Second, "the stream's end", func() { _, err = io.ReadAll(st) })
	requireLost(t, err)
}

func TestLimitConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.MaxStreams = -1
	require.Error(t, c.Validate())
	c = DefaultConfig()
	c.MaxLifetime = -time.Second
	require.Error(t, c.Validate())
	require.Equal(t, 1024, DefaultConfig().MaxStreams)
}
