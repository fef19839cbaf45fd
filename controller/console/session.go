package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"sync"
	"time"
)

// session is one logged-in browser. Sessions live in memory only: a
// controller restart logs everyone out, which is the safe direction.
type session struct {
	id      string
	csrf    string    // sent back with every POST
	created time.Time // the absolute lifetime counts from here
	seen    time.Time // the idle timeout counts from here
}

// sessions is the store. Lookups refresh the idle clock; expired sessions
// are dropped when met and swept on each login so the map stays bounded.
type sessions struct {
	mu       sync.Mutex
	byID     map[string]*session
	idle     time.Duration
	lifetime time.Duration
	now      func() time.Time
}

func newSessions(idle, lifetime time.Duration, now func() time.Time) *sessions {
	return &sessions{byID: map[string]*session{}, idle: idle, lifetime: lifetime, now: now}
}

// randomToken is 32 random bytes in hex: unguessable session ids and CSRF
// tokens.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// create starts a session.
func (s *sessions) create() *session {
	now := s.now()
	ss := &session{id: randomToken(), csrf: randomToken(), created: now, seen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, old := range s.byID {
		if s.expired(old, now) {
			delete(s.byID, id)
		}
	}
	s.byID[ss.id] = ss
	return ss
}

// get returns the live session with this id, or nil.
func (s *sessions) get(id string) *session {
	if id == "" {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.byID[id]
	if ss == nil {
		return nil
	}
	if s.expired(ss, now) {
		delete(s.byID, id)
		return nil
	}
	ss.seen = now
	return ss
}

// remove ends a session (logout).
func (s *sessions) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

func (s *sessions) expired(ss *session, now time.Time) bool {
	return now.Sub(ss.seen) >= s.idle || now.Sub(ss.created) >= s.lifetime
}

// remaining is how long the session may live at most (the cookie's Max-Age).
func (s *sessions) remaining(ss *session) time.Duration {
	return s.lifetime - s.now().Sub(ss.created)
}

// csrfOK compares a presented CSRF token with the session's.
func (ss *session) csrfOK(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) == 1
}
