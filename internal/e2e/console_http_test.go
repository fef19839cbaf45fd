package e2e

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// consoleReply is one answer of the console, read whole.
type consoleReply struct {
	Status   int
	Location string
	Cookies  []*http.Cookie
	Body     string
}

// consoleDo sends one request without following redirects. origin "" sends
// no Origin header; cookie nil sends no session.
func (s *consoleSetup) consoleDo(t *testing.T, method, path string, form url.Values, origin string, cookie *http.Cookie) consoleReply {
	t.Helper()
	if s.http == nil {
		s.http = &http.Client{
			Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS13}},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	cl := s.http
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, s.base+path, body)
	require.NoError(t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := cl.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return consoleReply{Status: resp.StatusCode, Location: resp.Header.Get("Location"), Cookies: resp.Cookies(), Body: string(b)}
}

var csrfFieldRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

// checkRefusals: with plain net/http, everything but a same-origin login
// with the right token, and a same-origin POST carrying the session's CSRF
// token, is refused and shows nothing.
func (s *consoleSetup) checkRefusals(t *testing.T) {
	// The admin listener admits 16 connections from one address: give
	// them back for the browser.
	defer func() { s.http.CloseIdleConnections() }()
	own := s.base
	const evil = "https://evil.example"

	// No session: pages send to the login form; a token in a URL opens nothing.
	r := s.consoleDo(t, "GET", "/ui/", nil, "", nil)
	require.Equal(t, http.StatusSeeOther, r.Status)
	require.Equal(t, "/ui/login", r.Location)
	r = s.consoleDo(t, "GET", "/ui/?token="+url.QueryEscape(s.token), nil, "", nil)
	require.Equal(t, http.StatusSeeOther, r.Status, "a token in the URL is no login")
	require.Equal(t, "/ui/login", r.Location)
	r = s.consoleDo(t, "GET", "/ui/machines/web", nil, "", nil)
	require.Equal(t, "/ui/login", r.Location)

	// A wrong token is refused and shows nothing.
	r = s.consoleDo(t, "POST", "/ui/login", url.Values{"token": {"0123456789abcdef0123456789abcdef0123456789abcdef"}}, own, nil)
	require.Equal(t, http.StatusUnauthorized, r.Status)
	require.Empty(t, r.Cookies, "no session for a wrong token")
	require.Contains(t, r.Body, "Wrong token")
	require.NotContains(t, r.Body, "data-machine")
	require.NotContains(t, r.Body, "web")

	// The right token from another Origin, or from none: refused.
	for _, origin := range []string{evil, ""} {
		r = s.consoleDo(t, "POST", "/ui/login", url.Values{"token": {s.token}}, origin, nil)
		require.Equal(t, http.StatusForbidden, r.Status, "login with Origin %q", origin)
		require.Empty(t, r.Cookies)
	}

	// The right token from the console's own Origin: a session cookie.
	r = s.consoleDo(t, "POST", "/ui/login", url.Values{"token": {s.token}}, own, nil)
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	require.Equal(t, "/ui/", r.Location)
	require.Len(t, r.Cookies, 1)
	ck := r.Cookies[0]
	require.Equal(t, "ferry_session", ck.Name)
	require.True(t, ck.HttpOnly, "HttpOnly")
	require.True(t, ck.Secure, "Secure")
	require.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	require.Equal(t, "/ui/", ck.Path)
	require.Positive(t, ck.MaxAge, "the session expires")
	require.NotContains(t, ck.Value, s.token)
	session := &http.Cookie{Name: ck.Name, Value: ck.Value}

	r = s.consoleDo(t, "GET", "/ui/", nil, "", session)
	require.Equal(t, http.StatusOK, r.Status)
	require.Contains(t, r.Body, `data-machine="web"`)
	require.Contains(t, r.Body, `data-machine="db"`)
	require.NotContains(t, r.Body, s.token, "the page never carries the admin token")
	m := csrfFieldRE.FindStringSubmatch(r.Body)
	require.NotNil(t, m, "the page carries the session's CSRF token")
	csrf := m[1]

	// The session cookie is no credential for the admin API.
	r = s.consoleDo(t, "GET", "/v1/machines", nil, own, session)
	require.Equal(t, http.StatusUnauthorized, r.Status)

	var before []Job
	s.c.JSON(&before, "jobs", "list")
	const action = "/ui/machines/db/actions/test-failover"
	for _, tc := range []struct {
		why     string
		form    url.Values
		origin  string
		cookie  *http.Cookie
		status  int
		message string
	}{
		{"no CSRF token", url.Values{}, own, session, http.StatusForbidden, "CSRF"},
		{"a wrong CSRF token", url.Values{"csrf": {strings.Repeat("0", 64)}}, own, session, http.StatusForbidden, "CSRF"},
		{"another Origin", url.Values{"csrf": {csrf}}, evil, session, http.StatusForbidden, "cross-origin"},
		{"no Origin", url.Values{"csrf": {csrf}}, "", session, http.StatusForbidden, "cross-origin"},
		{"no session", url.Values{"csrf": {csrf}}, own, nil, http.StatusUnauthorized, "not logged in"},
	} {
		r = s.consoleDo(t, "POST", action, tc.form, tc.origin, tc.cookie)
		require.Equal(t, tc.status, r.Status, "%s: %s", tc.why, r.Body)
		require.Contains(t, r.Body, tc.message, tc.why)
		require.NotContains(t, r.Body, "data-machine", tc.why)
	}
	// Past the console's checks, the admin API validates the action as it
	// does the CLI's: db is protected, there is nothing to clean up.
	r = s.consoleDo(t, "POST", "/ui/machines/db/actions/cleanup", url.Values{"csrf": {csrf}}, own, session)
	require.Equal(t, http.StatusPreconditionFailed, r.Status, r.Body)
	require.Contains(t, r.Body, "Clean up of db refused: machine db is protected")
	var audited []string
	for _, e := range s.consoleAudit(t) {
		if slices.Contains(e.Targets, "db") {
			audited = append(audited, e.Path+" "+e.Result+" "+e.Code)
		}
	}
	require.Equal(t, []string{"/v1/cleanup error failed_precondition"}, audited,
		"the refusal is audited; the POSTs the console refused never reached the admin API")
	var after []Job
	s.c.JSON(&after, "jobs", "list")
	require.Equal(t, len(before), len(after), "no refused action started a job")
	var db struct{ State string }
	s.c.JSON(&db, "machines", "show", "db")
	require.Equal(t, "protected", db.State)

	// Logging out ends the session.
	r = s.consoleDo(t, "POST", "/ui/logout", url.Values{"csrf": {csrf}}, own, session)
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	r = s.consoleDo(t, "GET", "/ui/", nil, "", session)
	require.Equal(t, http.StatusSeeOther, r.Status)
	require.Equal(t, "/ui/login", r.Location)
}

// checkLongStream: a job's event stream stays open past the admin
// listener's 30 s timeouts (a long step sends no event for minutes), with
// keep-alives meanwhile, and still delivers the job's end.
func (s *consoleSetup) checkLongStream(t *testing.T) {
	release := filepath.Join(t.TempDir(), "release")
	t.Setenv("FERRY_TEST_PAUSE", "start:"+release)
	s.c.Restart()
	s.base = s.c.Proc.WaitOutput(adminURLRE, 10*time.Second)[1]
	s.http = nil // the old listener is gone
	defer func() { s.http.CloseIdleConnections() }()

	r := s.consoleDo(t, "POST", "/ui/login", url.Values{"token": {s.token}}, s.base, nil)
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	session := &http.Cookie{Name: r.Cookies[0].Name, Value: r.Cookies[0].Value}

	var started Job
	s.c.JSON(&started, "failover", "db", "--test")
	j := started.ID
	require.NotEmpty(t, j)
	s.c.Proc.WaitOutput(regexp.MustCompile(`test pause before step start of job `+regexp.QuoteMeta(j)), time.Minute)
	req, err := http.NewRequest("GET", s.base+"/ui/jobs/"+j+"/events", nil)
	require.NoError(t, err)
	req.AddCookie(session)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := s.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))

	events := make(chan string, 64)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			events <- sc.Text()
		}
	}()
	// Past the read timeout (30 s), with keep-alives meanwhile.
	deadline := time.After(40 * time.Second)
	keepAlives := 0
wait:
	for {
		select {
		case line, open := <-events:
			require.True(t, open, "the stream closed while the job was held")
			if strings.HasPrefix(line, ": keep-alive") {
				keepAlives++
			}
		case <-deadline:
			break wait
		}
	}
	require.GreaterOrEqual(t, keepAlives, 2, "keep-alives every 15 s")
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	var last string
	timeout := time.After(time.Minute)
	for {
		select {
		case line, open := <-events:
			require.True(t, open, "the stream closed before its end event")
			if strings.HasPrefix(line, "data: {\"id\"") {
				last = line
			}
			if line == "event: end" {
				require.Contains(t, last, `"state":"succeeded"`, "the last job event before the end")
				s.c.runJob(t, 0, "cleanup", "db")
				return
			}
		case <-timeout:
			t.Fatal("no end event within a minute of the release")
		}
	}
}

// auditEntry is an entry of `ferry audit list --json`.
type auditEntry struct {
	Who, Via, Path, Result, Code, Job string
	Targets                           []string
}

// consoleAudit lists the audit trail's entries made through the console,
// checking they carry the console's identity: the admin token's
// fingerprint, never the token.
func (s *consoleSetup) consoleAudit(t *testing.T) []auditEntry {
	t.Helper()
	var all []auditEntry
	s.c.JSON(&all, "audit", "list")
	sum := sha256.Sum256([]byte(s.token))
	who := "token:sha256:" + hex.EncodeToString(sum[:6])
	var out []auditEntry
	for _, e := range all {
		if e.Via == "console" {
			require.Equal(t, who, e.Who, "the console's calls carry its token identity")
			out = append(out, e)
		}
	}
	return out
}
