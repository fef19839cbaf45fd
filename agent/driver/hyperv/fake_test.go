package hyperv

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The fake powershell.exe is a small /bin/sh script written into the test's
// temporary directory: it records its arguments and the ParamsEnv value of
// each call, then prints the synthetic fixture the test queued for that call
// and exits with its code (or hangs until killed). The test decodes the
// -EncodedCommand argument itself.

var update = flag.Bool("update", false, "rewrite testdata/golden")

const fakeScript = `#!/bin/sh
d=$(dirname "$0")
n=0
while [ -e "$d/call-$n.args" ]; do n=$((n+1)); done
for a in "$@"; do printf '%s\n' "$a"; done > "$d/call-$n.params.tmp"
mv "$d/call-$n.params.tmp" "$d/call-$n.args"
printf '%s' "$FERRY_HYPERV_PARAMS" > "$d/call-$n.params"
if [ ! -e "$d/reply-$n" ]; then echo "fake powershell: no reply for call $n" >&2; exit 97; fi
{ read -r code; read -r fixture; } < "$d/reply-$n"
if [ "$code" = hang ]; then exec sleep 60; fi
cat "$fixture"
exit "$code"
`

// call is one invocation of the fake as it saw it.
type call struct {
	Args   []string
	Script string // decoded -EncodedCommand
	Params string // the ParamsEnv value
}

// fake is a test's handle on the fake powershell.exe.
type fake struct {
	t   *testing.T
	dir string
	exe string
}

// newFake writes the fake and queues its replies: each a fixture name (exit
// 0; exit 1 for synthetic-error-* and synthetic-garbage), or "hang".
func newFake(t *testing.T, replies ...string) *fake {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("the fake powershell.exe is a /bin/sh script:", err)
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "powershell.exe")
	require.NoError(t, os.WriteFile(exe, []byte(fakeScript), 0o755))
	for i, r := range replies {
		content := "hang\n"
		if r != "hang" {
			p, err := filepath.Abs(filepath.Join("testdata", r+".txt"))
			require.NoError(t, err)
			require.FileExists(t, p)
			exit := 0
			if strings.HasPrefix(r, "synthetic-error-") || r == "synthetic-garbage" {
				exit = 1
			}
			content = fmt.Sprintf("%d\n%s\n", exit, p)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("reply-%d", i)), []byte(content), 0o644))
	}
	return &fake{t: t, dir: dir, exe: exe}
}

// driver makes a driver whose powershell is the fake.
func (f *fake) driver(opts map[string]string) *Driver {
	f.t.Helper()
	o := map[string]string{OptPowerShell: f.exe}
	for k, v := range opts {
		o[k] = v
	}
	d, err := New(o)
	require.NoError(f.t, err)
	return d.WithLogger(testLogger(f.t))
}

// calls returns what the fake was sent, checking each call's command line
// and its script against the golden script of its operation.
func (f *fake) calls() []call {
	f.t.Helper()
	var cs []call
	for i := 0; ; i++ {
		b, err := os.ReadFile(filepath.Join(f.dir, fmt.Sprintf("call-%d.args", i)))
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		require.NoError(f.t, err)
		c := call{Args: strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")}
		pb, err := os.ReadFile(filepath.Join(f.dir, fmt.Sprintf("call-%d.params", i)))
		require.NoError(f.t, err)
		c.Params = string(pb)
		c.Script, err = DecodeCommand(c.Args[len(c.Args)-1])
		require.NoError(f.t, err)
		require.Equal(f.t, Args, c.Args[:len(c.Args)-1], "powershell.exe's arguments are fixed")
		checkGoldenScript(f.t, opOf(f.t, c), c.Script)
		cs = append(cs, c)
	}
	return cs
}

// ops lists the operations of the calls.
func (f *fake) ops() []string {
	var o []string
	for _, c := range f.calls() {
		o = append(o, opOf(f.t, c))
	}
	return o
}

func opOf(t *testing.T, c call) string {
	first, _, _ := strings.Cut(c.Script, "\n")
	var op string
	var v int
	_, err := fmt.Sscanf(first, "# ferry hyperv %s v%d", &op, &v)
	require.NoError(t, err, "script header %q", first)
	return op
}

func (c call) params(t *testing.T) params {
	var p params
	require.NoError(t, json.Unmarshal([]byte(c.Params), &p))
	return p
}

// checkGoldenScript compares a script with testdata/golden/<op>.ps1.
func checkGoldenScript(t *testing.T, op, text string) {
	t.Helper()
	checkGolden(t, op+".ps1", text)
}

func checkGolden(t *testing.T, name, text string) {
	t.Helper()
	p := filepath.Join("testdata", "golden", name)
	if *update {
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	want, err := os.ReadFile(p)
	require.NoError(t, err, "run go test -update to write %s", p)
	require.Equal(t, string(want), text, "%s differs from what the driver sends", p)
}
