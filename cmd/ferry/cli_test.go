package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/syncbuf"
)

// These tests run the CLI in process: run() with arguments, against a real
// controller started by the same run("serve", …) in a temp data directory
// (real sockets, real SQLite, real repository).

// served is a controller started through `ferry serve`.
type served struct {
	admin string // admin socket path, as OnReady printed it
	agent string // agent address, HOST:PORT
	data  string
	stop  func() // ends the controller (cleanup does too)
}

var readyLine = regexp.MustCompile(`listening on (\S+) \(admin (\S+)\)`)

func serve(t *testing.T) *served {
	t.Helper()
	s, _ := serveData(t, t.TempDir())
	return s
}

// serveData starts `ferry serve` on data with extra flags; stop ends it
// (also done at cleanup) so a test can start it again on the same data.
func serveData(t *testing.T, data string, extra ...string) (s *served, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncbuf.Buffer
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, append([]string{"serve", "--data", data, "--listen", "127.0.0.1:0",
			"--admin-socket", filepath.Join(data, "a.sock"), "--log-level", "warn"}, extra...), &out, &errb)
	}()
	var admin, agentAddr string
	require.Eventually(t, func() bool {
		select {
		case c := <-code:
			code <- c
			return true // fail below with its output
		default:
		}
		m := readyLine.FindStringSubmatch(out.String())
		if m != nil {
			agentAddr, admin = m[1], m[2]
		}
		return m != nil
	}, 30*time.Second, 10*time.Millisecond, "ferry serve never printed its ready line")
	require.NotEmpty(t, admin, "ferry serve ended early: %s", errb.String())
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case c := <-code:
				if c != exitOK {
					t.Errorf("ferry serve exited %d after cancel: %s", c, errb.String())
				}
			case <-time.After(30 * time.Second):
				t.Error("ferry serve did not stop within 30 s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return &served{admin: admin, agent: agentAddr, data: data, stop: stop}, stop
}

// cli runs one command and returns its exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func (s *served) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return cli(t, append([]string{"--admin", s.admin}, args...)...)
}

// jsonError decodes the {"code","message"} that --json prints on stderr.
func jsonError(t *testing.T, stderr string) api.Error {
	t.Helper()
	var e api.Error
	require.NoError(t, json.Unmarshal([]byte(stderr), &e), "stderr is not a JSON error: %q", stderr)
	require.NotEmpty(t, e.Message)
	return e
}

// TestCLIUsageErrors: each wrong invocation exits 2 before contacting any
// controller (the admin address given does not exist, which would exit 69),
// and with --json says code "usage".
func TestCLIUsageErrors(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no.sock")
	for _, args := range [][]string{
		{"frobnicate"},
		{"machines", "list", "--bogus"},
		{"machines", "show"},
		{"machines", "show", "a", "b"},
		{"points", "list"},
		{"points", "export", "vm1"},
		{"tokens", "create", "--ttl", "soon"},
		{"tokens", "create", "--uses", "0"},
		{"tokens", "create", "--uses", "many"},
		{"policies", "create", "p", "--rp-every", "-5s"},
		{"policies", "create", "p", "--block-size", "3KiB"},
		{"policies", "update", "p", "--bandwidth", "fast"},
		{"protect", "vm1", "--disk", "/dev/sdb"},
		{"protect", "vm1", "--agent", "a1"},
		{"protect", "vm1", "--agent", "a1", "--disk", "a b=/dev/sdb"},
		{"protect", "vm1", "--agent", "a1", "--disk", "/x/d.raw", "--disk", "/y/d.raw"},
		{"keys", "generate"},
		{"verify", "a", "b"},
		{"serve", "extra"},
		{"serve", "--log-level", "loud"},
		{"serve", "--agent-lost-after", "soon"},
		{"serve", "--agent-lost-after", "0s"},
		{"version", "extra"},
		{"failover"},
		{"failover", "a", "b"},
		{"failover", "m", "--plan", "p"},
		{"failover", "m", "--test", "--planned"},
		{"failover", "m", "--test", "--shutdown-source"},
		{"failover", "m", "--planned", "--point", "3"},
		{"failover", "m", "--direction", "sideways"},
		{"failover", "m", "--timeout", "soon"},
		{"change-point", "m"},
		{"change-point", "--plan", "p", "--point", "42"},
		{"failover", "--plan", "p", "--point", "7"},
		{"failback", "--plan", "p", "--point", "7"},
		{"cancel", "job-1"},
		{"jobs", "show"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, _, stderr := cli(t, append([]string{"--admin", nowhere}, args...)...)
			require.Equal(t, exitUsage, code, "stderr: %s", stderr)
			code, stdout, stderr := cli(t, append([]string{"--admin", nowhere, "--json"}, args...)...)
			require.Equal(t, exitUsage, code)
			require.Empty(t, stdout)
			require.Equal(t, "usage", jsonError(t, stderr).Code)
		})
	}
}

// TestCLIUnreachable: a command that needs the controller exits 69 when
// the admin socket does not answer, with code unavailable under --json.
func TestCLIUnreachable(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no.sock")
	code, _, _ := cli(t, "--admin", nowhere, "machines", "list")
	require.Equal(t, exitUnreachable, code)
	code, _, stderr := cli(t, "--admin", nowhere, "--json", "policies", "list")
	require.Equal(t, exitUnreachable, code)
	require.Equal(t, api.CodeUnavailable, jsonError(t, stderr).Code)
	// The environment variable is the fallback for --admin.
	t.Setenv("FERRY_ADMIN", nowhere)
	code, _, _ = cli(t, "tokens", "list")
	require.Equal(t, exitUnreachable, code)
}

// TestCLIPolicies: create, list, update and delete a policy through the
// CLI against a real controller; refusals exit 1 with the server's code,
// and a usage error changes nothing on the server.
func TestCLIPolicies(t *testing.T) {
	s := serve(t)
	code, _, stderr := s.cli(t, "policies", "create", "gold", "--rp-every", "10s", "--retention", "2h", "--bandwidth", "10MiB/s", "--block-size", "128KiB")
	require.Equal(t, exitOK, code, stderr)

	list := func() map[string]api.Policy {
		code, stdout, stderr := s.cli(t, "--json", "policies", "list")
		require.Equal(t, exitOK, code, stderr)
		var ps []api.Policy
		require.NoError(t, json.Unmarshal([]byte(stdout), &ps))
		m := map[string]api.Policy{}
		for _, p := range ps {
			m[p.Name] = p
		}
		return m
	}
	gold := list()["gold"]
	require.Equal(t, api.Duration(10*time.Second), gold.RPEvery)
	require.Equal(t, api.Duration(2*time.Hour), gold.Retention)
	require.Equal(t, int64(10<<20), gold.Bandwidth)
	require.Equal(t, 128<<10, gold.BlockSize)
	require.Equal(t, api.DefaultPolicy("x").AppEvery, gold.AppEvery)

	code, _, stderr = s.cli(t, "--json", "policies", "create", "gold")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeConflict, jsonError(t, stderr).Code)

	// A usage error in an update reaches nothing.
	code, _, _ = s.cli(t, "policies", "update", "gold", "--rp-every", "1m", "--block-size", "5000")
	require.Equal(t, exitUsage, code)
	require.Equal(t, gold, list()["gold"], "a refused update changed the policy")

	code, stdout, stderr := s.cli(t, "policies", "update", "gold", "--rp-every", "1m")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "gold")
	require.Equal(t, api.Duration(time.Minute), list()["gold"].RPEvery)

	code, _, stderr = s.cli(t, "--json", "policies", "update", "silver", "--rp-every", "1m")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)

	code, _, stderr = s.cli(t, "policies", "delete", "gold")
	require.Equal(t, exitOK, code, stderr)
	require.NotContains(t, list(), "gold")
	code, _, stderr = s.cli(t, "--json", "policies", "delete", "gold")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)
}

// TestCLITokens: a created token is listed, revoked, and shown revoked;
// revoking an unknown id is refused with not_found.
func TestCLITokens(t *testing.T) {
	s := serve(t)
	code, stdout, stderr := s.cli(t, "--json", "tokens", "create", "--ttl", "1h", "--uses", "3")
	require.Equal(t, exitOK, code, stderr)
	var tok api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok))
	require.NotEmpty(t, tok.Token)
	require.Equal(t, 3, tok.Uses)
	require.WithinDuration(t, time.Now().Add(time.Hour), tok.Expires, time.Minute)

	code, stdout, stderr = s.cli(t, "tokens", "create")
	require.Equal(t, exitOK, code, stderr)
	require.Len(t, strings.Fields(stdout), 1, "without --json, create prints the token alone")

	code, _, stderr = s.cli(t, "tokens", "revoke", tok.ID)
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr = s.cli(t, "--json", "tokens", "list")
	require.Equal(t, exitOK, code, stderr)
	var toks []api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &toks))
	require.Len(t, toks, 2)
	for _, x := range toks {
		require.Empty(t, x.Token, "tokens list shows a token's secret")
		require.Equal(t, x.ID == tok.ID, x.Revoked, "token %s", x.ID)
	}
	code, stdout, _ = s.cli(t, "tokens", "list")
	require.Equal(t, exitOK, code)
	require.Regexp(t, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(tok.ID)+`\s+revoked\s+0/3`), stdout)

	code, _, stderr = s.cli(t, "--json", "tokens", "revoke", "no-such-token")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)
}

// TestCLIUnknownObjects: commands about a machine, agent or job that does
// not exist exit 1 with not_found.
func TestCLIUnknownObjects(t *testing.T) {
	s := serve(t)
	for _, args := range [][]string{
		{"machines", "show", "ghost"},
		{"points", "list", "ghost"},
		{"agents", "revoke", "ghost"},
		{"jobs", "show", "ghost"},
		{"points", "export", "ghost", "--out", t.TempDir()},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, stdout, stderr := s.cli(t, append([]string{"--json"}, args...)...)
			require.Equal(t, exitError, code, "stdout %s stderr %s", stdout, stderr)
			require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)
		})
	}
	code, stdout, stderr := s.cli(t, "--json", "machines", "list")
	require.Equal(t, exitOK, code, stderr)
	require.JSONEq(t, "[]", stdout)
}

// TestRunPointsExportKeyFile: a missing --key-file is reported with the
// file system's error (exit 1) before the controller is asked, and writes
// nothing into --out.
func TestRunPointsExportKeyFile(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	var so, se bytes.Buffer
	g := &globals{admin: filepath.Join(t.TempDir(), "no.sock"), stdout: &so, stderr: &se}
	err := runPointsExport(context.Background(), g, "vm1", exportOptions{point: "latest", out: out, keyFile: filepath.Join(t.TempDir(), "missing.key")})
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.Equal(t, exitError, exitCodeOf(err))
	_, err = os.Stat(out)
	require.ErrorIs(t, err, fs.ErrNotExist, "export created its output directory before failing")
}

// TestRunKeysGenerate: keys generate writes a key pair a controller can
// then be started with (a real encrypted repository).
func TestRunKeysGenerate(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := cli(t, "keys", "generate", "--out", dir)
	require.Equal(t, exitOK, code, stderr)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var pub string
	for _, e := range ents {
		info, err := e.Info()
		require.NoError(t, err)
		if strings.Contains(e.Name(), "pub") {
			pub = filepath.Join(dir, e.Name())
		} else {
			require.Equal(t, fs.FileMode(0o600), info.Mode().Perm(), "private key %s is not 0600", e.Name())
		}
	}
	require.NotEmpty(t, pub, "no public key file among %v (stdout %s)", ents, stdout)

	data := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data", data, "--listen", "127.0.0.1:0", "--public-key", pub, "--log-level", "warn"}, &out, &errb)
	}()
	require.Eventually(t, func() bool { return readyLine.MatchString(out.String()) }, 30*time.Second, 10*time.Millisecond, "serve with --public-key: %s", errb.String())
	cancel()
	require.Equal(t, exitOK, <-done)

	// Generating into the same directory again must not overwrite the keys.
	before, err := os.ReadFile(pub)
	require.NoError(t, err)
	code, _, _ = cli(t, "keys", "generate", "--out", dir)
	require.NotEqual(t, exitOK, code, "keys generate overwrote an existing key pair")
	after, err := os.ReadFile(pub)
	require.NoError(t, err)
	require.Equal(t, before, after)
}

// TestExitCodes: the error classes map to CLI.md's exit codes.
func TestExitCodes(t *testing.T) {
	require.Equal(t, exitUsage, exitCodeOf(usagef("x")))
	require.Equal(t, exitJobFailed, exitCodeOf(&exitCodeError{code: exitJobFailed, err: errors.New("failed")}))
	require.Equal(t, exitJobPartial, exitCodeOf(&exitCodeError{code: exitJobPartial, err: errors.New("partial")}))
	require.Equal(t, exitError, exitCodeOf(errors.New("other")))
	require.Equal(t, exitError, exitCodeOf(&api.Error{Code: api.CodeNotFound, Message: "x"}))
}

// TestCLIFlagSuggestions: an unknown flag close to one of the command's
// own is refused with the flag it probably meant; one close to none is
// refused without a guess.
func TestCLIFlagSuggestions(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"machines", "list", "--admin-socket", "x"}, "(did you mean --admin?)"},
		{[]string{"protect", "vm1", "--polcy", "gold"}, "(did you mean --policy?)"},
		{[]string{"policies", "create", "p", "--rp-evry", "30s"}, "(did you mean --rp-every?)"},
		{[]string{"machines", "list", "--frobnicate"}, ""},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, _, stderr := cli(t, append([]string{"--admin", nowhere}, c.args...)...)
			require.Equal(t, exitUsage, code, "stderr: %s", stderr)
			require.Contains(t, stderr, "unknown flag: --")
			if c.want == "" {
				require.NotContains(t, stderr, "did you mean", "a guess for a flag close to none")
				return
			}
			require.Contains(t, stderr, c.want)
		})
	}
}
