package archcheck

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ferrydr/ferry"

// leaves are packages of ours that import nothing of ours and so may be
// imported from anywhere (checked below).
var leaves = []string{module + "/internal/buildinfo", module + "/internal/fsutil", module + "/internal/testenv", module + "/internal/workload", module + "/internal/profiling", module + "/internal/syncbuf", module + "/internal/pgtest"}

// allowed maps a package prefix to the prefixes of ours it may import.
var allowed = map[string][]string{
	"protocol":   {"protocol"},
	"storage":    {"storage"},
	"agent":      {"agent", "protocol"},
	"controller": {"controller", "protocol", "storage"},
	"installer":  {"installer", "agent", "protocol"},
	"scripts":    {"scripts"},
}

type pkg struct {
	path string
	deps []string
	cgo  bool
}

func listPackages(t *testing.T, env ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{join .Deps " "}}|{{len .CgoFiles}}`, module+"/...")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), "|", 3)
		if len(parts) != 3 {
			continue
		}
		p := pkg{path: parts[0], cgo: parts[2] != "0"}
		p.deps = append(p.deps, strings.Fields(parts[1])...)
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func ours(path string) (rel string, ok bool) {
	if path == module {
		return "", true
	}
	if strings.HasPrefix(path, module+"/") {
		return strings.TrimPrefix(path, module+"/"), true
	}
	return "", false
}

func top(rel string) string { return strings.SplitN(rel, "/", 2)[0] }

func isLeaf(path string) bool {
	for _, l := range leaves {
		if path == l {
			return true
		}
	}
	return false
}

// TestImportRules checks the dependency direction of STYLE.md: protocol and
// storage import nothing of ours, agent only protocol, controller protocol
// and storage (never agent), installer agent's config; cmd wires anything.
func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		rel, _ := ours(p.path)
		if isLeaf(p.path) {
			for _, d := range p.deps {
				if _, ok := ours(d); ok {
					t.Errorf("%s is a leaf package but imports %s", rel, d)
				}
			}
			continue
		}
		rules, ok := allowed[top(rel)]
		if !ok || strings.HasPrefix(rel, "scripts/") {
			continue // cmd/, scripts/<program>, internal/ test helpers: wiring may import anything
		}
		for _, d := range p.deps {
			drel, mine := ours(d)
			if !mine || isLeaf(d) {
				continue
			}
			okDep := false
			for _, r := range rules {
				if top(drel) == r {
					okDep = true
				}
			}
			if !okDep {
				t.Errorf("%s imports %s: %s may import only %v", rel, drel, top(rel), rules)
			}
		}
	}
}

// TestAgentIsCgoFree asserts that nothing the agent binary links uses cgo,
// so it cross-compiles to linux/arm64 and windows/amd64 with CGO_ENABLED=0.
func TestAgentIsCgoFree(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}} {{len .CgoFiles}}`, "./cmd/ferry-agent")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] != "0" && f[0] != "runtime/cgo" && !strings.HasPrefix(f[0], "net") && !strings.HasPrefix(f[0], "os/user") {
			t.Errorf("agent dependency %s uses cgo", f[0])
		}
		if len(f) == 2 && (f[0] == "github.com/mattn/go-sqlite3") {
			t.Errorf("agent links SQLite (%s); the agent must stay cgo-free", f[0])
		}
	}
}

// TestRigIsForTestsOnly: internal/rig (a controller and agents in one
// process) links agent and controller together, so only tests may import
// it — no program or library package of ours.
func TestRigIsForTestsOnly(t *testing.T) {
	rig := module + "/internal/rig"
	for _, p := range listPackages(t) {
		if p.path == rig {
			continue
		}
		for _, d := range p.deps {
			if d == rig {
				t.Errorf("%s imports %s: only tests may", p.path, rig)
			}
		}
	}
}
