package console

import (
	"crypto/subtle"
	"net/http"
	"strings"
	"time"
)

// cookieName is the session cookie. Its path is the console's, so the
// admin API under /v1/ never receives it (the API takes only the bearer
// token: a browser cannot be made to call it with ambient credentials).
const cookieName = "ferry_session"

// failedLoginDelay slows token guessing a little; the admin listener's
// connection budget bounds how many guesses run at once.
const failedLoginDelay = 300 * time.Millisecond

// handler is a page or action that has a live session.
type handler func(w http.ResponseWriter, r *http.Request, ss *session)

// authed requires a session; a POST must also come from our own Origin and
// carry the session's CSRF token. A page without a session goes to the
// login form; anything else without one is refused with nothing shown.
func (c *Console) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && !c.sameOrigin(r) {
			c.refuse(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
		var ss *session
		if ck, err := r.Cookie(cookieName); err == nil {
			ss = c.sessions.get(ck.Value)
		}
		if ss == nil {
			if r.Method == http.MethodGet && r.Header.Get("Accept") != "text/event-stream" {
				http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
				return
			}
			c.refuse(w, r, http.StatusUnauthorized, "not logged in")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		}
		if r.Method == http.MethodPost && !ss.csrfOK(csrfOf(r)) {
			c.refuse(w, r, http.StatusForbidden, "missing or wrong CSRF token")
			return
		}
		h(w, r, ss)
	}
}

// csrfOf is the CSRF token a POST carries: the form field, or the header
// the script sets.
func csrfOf(r *http.Request) string {
	if v := r.Header.Get("X-CSRF-Token"); v != "" {
		return v
	}
	return r.PostFormValue("csrf")
}

// sameOrigin reports whether a POST's Origin is the console's own. Every
// browser sends Origin on a POST; a request without one is not a page of
// ours, so it is refused too.
func (c *Console) sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	return origin != "" && strings.EqualFold(origin, "https://"+r.Host)
}

// refuse answers a refused request with a bare status line: no page, no data.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, why string) {
	c.log.Warn("console request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "why", why)
	http.Error(w, http.StatusText(status)+": "+why, status)
}

// loginData tells the login form how long a session lasts.
type loginData struct{ Idle, Lifetime time.Duration }

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login", pageData{Title: "Log in", Data: c.loginData()})
}

func (c *Console) loginData() loginData {
	return loginData{Idle: c.cfg.IdleTimeout, Lifetime: c.cfg.Lifetime}
}

// login checks the posted admin token and starts a session. The token
// travels only in this POST's body; the answer redirects to the overview.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !c.sameOrigin(r) {
		c.refuse(w, r, http.StatusForbidden, "cross-origin login refused")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	got := strings.TrimSpace(r.PostFormValue("token"))
	if c.cfg.Token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(c.cfg.Token)) != 1 {
		c.log.Warn("console login refused: wrong token", "remote", r.RemoteAddr)
		time.Sleep(failedLoginDelay)
		c.render(w, http.StatusUnauthorized, "login", pageData{Title: "Log in", Error: "Wrong token.", Data: c.loginData()})
		return
	}
	ss := c.sessions.create()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: ss.id, Path: Prefix,
		MaxAge: int(c.sessions.remaining(ss) / time.Second), HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	c.log.Info("console login", "remote", r.RemoteAddr)
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, ss *session) {
	c.sessions.remove(ss.id)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: Prefix, MaxAge: -1,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}
