package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// readmeWalkthrough returns the shell block of the README's two-host
// walkthrough, as a reader would copy it.
func readmeWalkthrough(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(), "README.md"))
	require.NoError(t, err)
	doc := string(b)
	i := strings.Index(doc, "## Two hosts on one machine: a walkthrough")
	require.GreaterOrEqual(t, i, 0, "README.md has no two-host walkthrough section")
	doc = doc[i:]
	start := strings.Index(doc, "```sh\n")
	require.GreaterOrEqual(t, start, 0, "the walkthrough has no ```sh block")
	doc = doc[start+len("```sh\n"):]
	end := strings.Index(doc, "\n```")
	require.GreaterOrEqual(t, end, 0, "the walkthrough's block does not end")
	return doc[:end+1]
}

// placeholderLine is a line the reader is told to change: NAME=VALUE
// followed by a "# placeholder" comment.
var placeholderLine = regexp.MustCompile(`(?m)^([A-Z_]+)=(\S+)(\s+# placeholder\b.*)$`)

// TestREADMEWalkthrough runs the README's two-host walkthrough — the
// commands extracted from README.md itself, with the real binaries — with
// only its placeholder lines (a scratch directory, a port) replaced. It
// must end with exit 0, the recovery site's write must be in the home
// disk after the failback, and the home disk must equal, byte for byte,
// the image the script made (seq 1 2000000, 16 MiB) with that write.
func TestREADMEWalkthrough(t *testing.T) {
	bin := Binaries(t)
	script := readmeWalkthrough(t)
	work := filepath.Join(t.TempDir(), "walk")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	require.NoError(t, l.Close())
	values := map[string]string{"WORK": work, "PORT": port}
	replaced := map[string]bool{}
	script = placeholderLine.ReplaceAllStringFunc(script, func(line string) string {
		m := placeholderLine.FindStringSubmatch(line)
		v, ok := values[m[1]]
		require.True(t, ok, "the walkthrough has a placeholder %s this test does not know", m[1])
		replaced[m[1]] = true
		return m[1] + "=" + v + m[3]
	})
	require.Equal(t, map[string]bool{"WORK": true, "PORT": true}, replaced, "the walkthrough's placeholders")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, "FERRY_ADMIN=") // the script sets its own
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The background processes (controller, agents) are in the script's
	// process group: end them whatever happens.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err = cmd.Wait()
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"controller.log", "home.log", "dr.log"} {
			x, _ := os.ReadFile(filepath.Join(work, f))
			fmt.Fprintf(&b, "--- %s (tail)\n%s\n", f, tailString(string(x), 30))
		}
		return b.String()
	}
	require.NoError(t, err, "the walkthrough failed:\n%s\n%s", out.String(), logs())
	t.Logf("walkthrough output:\n%s", out.String())
	require.Contains(t, out.String(), "written at the recovery site", "the last command prints the home disk's bytes at the write")

	const size, at = 16 << 20, 8 << 20
	var want bytes.Buffer
	for i := 1; i <= 2000000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	w := make([]byte, size)
	copy(w, want.Bytes())
	copy(w[at:], "written at the recovery site")
	got, err := os.ReadFile(filepath.Join(work, "images", "vm.img"))
	require.NoError(t, err)
	require.Equal(t, len(w), len(got), "home disk size")
	require.True(t, bytes.Equal(w, got), "the home disk after the failback is not the image with the recovery site's write")
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestMakeDemo runs the demo as README's first command does (`make demo`
// is `go run ./scripts/demo -bin BIN`), with a small image: it must end
// "demo OK" after comparing the exported point with the disk byte for byte
// and finding no inconsistent point.
// It failed unnoticed once, when agents began to refuse exec driver
// commands they were not allowed.
func TestMakeDemo(t *testing.T) {
	testenv.RequireRoot(t) // the demo keeps its image on a loop-mounted XFS
	testenv.RequireTool(t, "mkfs.xfs")
	bin := Binaries(t)
	cmd := exec.Command("go", "run", "./scripts/demo", "-bin", bin, "-size", fmt.Sprint(16<<20))
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "identical: sha256 ")
	require.Contains(t, string(out), "no inconsistent points: ")
	require.Contains(t, string(out), "demo OK")
}
