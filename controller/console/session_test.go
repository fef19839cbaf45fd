package console

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSessionsExpire: a session ends after the idle timeout without use,
// and after its lifetime however busy it is; use refreshes the idle clock.
func TestSessionsExpire(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := newSessions(30*time.Minute, 2*time.Hour, func() time.Time { return now })

	idle := s.create()
	busy := s.create()
	require.NotEqual(t, idle.id, busy.id)
	require.NotEqual(t, idle.csrf, busy.csrf)
	require.Len(t, idle.id, 64)

	for range 4 { // 4 × 25 min: busy is used, idle is not
		now = now.Add(25 * time.Minute)
		require.Same(t, busy, s.get(busy.id), "a session in use stays")
	}
	require.Nil(t, s.get(idle.id), "idle for over 30 minutes")
	now = now.Add(15 * time.Minute) // 1h55m after creation
	require.Same(t, busy, s.get(busy.id))
	now = now.Add(5 * time.Minute) // 2 h after creation
	require.Nil(t, s.get(busy.id), "past its lifetime")
	require.Nil(t, s.get(""))
	require.Nil(t, s.get("not-a-session"))

	fresh := s.create() // creating sweeps the expired ones
	require.Len(t, s.byID, 1)
	require.True(t, fresh.csrfOK(fresh.csrf))
	require.False(t, fresh.csrfOK(""))
	require.False(t, fresh.csrfOK(busy.csrf))
	s.remove(fresh.id)
	require.Nil(t, s.get(fresh.id), "logged out")
}
