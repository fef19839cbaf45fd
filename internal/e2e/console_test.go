package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// consoleSetup is a controller serving the console on its admin TLS
// listener, a source agent, a recovery site with the fake hypervisor, and
// two protected machines (web and db) with their first point staged.
type consoleSetup struct {
	c     *Controller
	site  *Site
	base  string // https://127.0.0.1:PORT
	token string
	pool  *x509.CertPool // the controller's CA
	spki  string         // base64 SHA-256 of the admin certificate's public key
	// release lets the test failover's paused "start" step go on.
	release string
	http    *http.Client // the plain net/http client (keep-alive)
}

var adminURLRE = regexp.MustCompile(`\(admin (https://[^)\s]+)\)`)

func newConsoleSetup(t *testing.T) *consoleSetup {
	t.Helper()
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	s := &consoleSetup{release: filepath.Join(t.TempDir(), "release")}
	// The controller holds the first job's "start" step until the test
	// creates the release file: the browser sees the job running, then
	// watches the step finish live.
	t.Setenv("FERRY_TEST_PAUSE", "start:"+s.release)
	s.c = StartController(t, "--admin-listen", "127.0.0.1:0")
	s.base = s.c.Proc.WaitOutput(adminURLRE, 10*time.Second)[1]
	tok, err := os.ReadFile(filepath.Join(s.c.Data, "admin.token"))
	require.NoError(t, err)
	s.token = strings.TrimSpace(string(tok))
	caPEM, err := os.ReadFile(filepath.Join(s.c.Data, "pki", "ca.crt"))
	require.NoError(t, err)
	s.pool = x509.NewCertPool()
	require.True(t, s.pool.AppendCertsFromPEM(caPEM))
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.base, "https://"), &tls.Config{RootCAs: s.pool, ServerName: "127.0.0.1"})
	require.NoError(t, err, "the admin listener's certificate is issued by the controller's CA for 127.0.0.1")
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	conn.Close()
	s.spki = base64.StdEncoding.EncodeToString(sum[:])

	EnrollAgent(t, s.c, s.c.Addr, "src")
	s.site = AddSite(t, s.c, s.c.Addr, "dr")
	// Points only at protect and on demand: the figures the test compares
	// (last point, health) hold still while it runs.
	s.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	for i, m := range []string{"web", "db"} {
		img := filepath.Join(mnt, m+".img")
		makeImage(t, img, uint64(i)*11+5, 8<<20)
		s.c.MustFerry("protect", m, "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
	}
	for _, m := range []string{"web", "db"} {
		p := s.c.WaitPoint(m, 0, 2*time.Minute)
		s.site.waitStaged(t, m, p.ID)
	}
	return s
}

// machineFigures is what the overview shows of a machine, and what
// `machines list --json` says of it.
type machineFigures struct {
	Name       string   `json:"name"`
	State      string   `json:"state"`
	ActiveSite string   `json:"active_site"`
	Health     string   `json:"health"`
	Reason     string   `json:"health_reason"`
	RPOSeconds *float64 `json:"rpo_seconds"`
	LastPoint  string   `json:"last_point"`
}

// TestConsole: the web console on the admin TLS listener. Refusals are
// checked with plain net/http (a wrong token, a missing CSRF token,
// another Origin), then a real headless Chromium logs in, checks the
// overview against `ferry machines list --json`, starts a test failover
// from the page, watches its steps complete live, and cleans it up.
func TestConsole(t *testing.T) {
	testenv.RequireRoot(t)
	chromium := testenv.RequireTool(t, "chromium")
	s := newConsoleSetup(t)
	t.Run("refusals", func(t *testing.T) { s.checkRefusals(t) })
	t.Run("browser", func(t *testing.T) { s.browse(t, chromium) })
	t.Run("long-stream", func(t *testing.T) { s.checkLongStream(t) })
}

// artifactDir is where screenshots are kept: $FERRY_ARTIFACTS/TEST when
// set, else the test's artifact directory (kept with go test -artifacts).
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := t.ArtifactDir()
	if root := os.Getenv("FERRY_ARTIFACTS"); root != "" {
		dir = filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
		require.NoError(t, os.MkdirAll(dir, 0o755))
	}
	t.Logf("artifacts in %s", dir)
	return dir
}

// rpoClose: an RPO the page showed and one the CLI printed later differ
// by at most the time between the two reads (plus rounding).
func rpoClose(t *testing.T, name string, page, cli *float64, between time.Duration) {
	t.Helper()
	require.NotNil(t, page, "%s: the page shows no RPO", name)
	require.NotNil(t, cli, "%s: the CLI shows no RPO", name)
	d := *cli - *page
	require.True(t, d >= -0.2 && d <= between.Seconds()+0.5 && !math.IsNaN(d),
		"%s: RPO %.1fs on the page, %.1fs from the CLI %s later", name, *page, *cli, between)
}
