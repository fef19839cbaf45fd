package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/stretchr/testify/require"
)

// The command reference (docs/cli.md) and the man pages (man/) are
// generated from the cobra commands themselves. `make docs` rewrites them:
//
//	go test ./cmd/ferry -run TestCLIReferenceIsCurrent -update-docs
var updateDocs = flag.Bool("update-docs", false, "rewrite docs/cli.md and man/ from the commands")

const regenerate = "make docs (go test ./cmd/ferry -run TestCLIReferenceIsCurrent -update-docs)"

// manDate is the date the man pages' .TH line shows. It is fixed so that
// the generated pages depend on the commands only, not on when they were
// generated.
var manDate = time.Date(2026, time.December, 1, 0, 0, 0, 0, time.UTC)

// referenceRoot is the command tree as `ferry` runs it, with the hidden
// defaults cobra adds at Execute.
func referenceRoot() *cobra.Command {
	return newRootCommand(&globals{stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)})
}

// allCommands lists the available commands of the tree, depth first in
// the order help shows them.
func allCommands(c *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{c}
	for _, sub := range c.Commands() {
		if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
			continue
		}
		out = append(out, allCommands(sub)...)
	}
	return out
}

// anchor is the GitHub heading anchor of a command's section.
func anchor(path string) string { return strings.ReplaceAll(path, " ", "-") }

// generateReference renders docs/cli.md and the man pages (file name →
// content) from the command tree.
func generateReference(root *cobra.Command) ([]byte, map[string][]byte, error) {
	var md bytes.Buffer
	md.WriteString("<!-- Generated from the commands (cmd/ferry) by `" + regenerate + "`. Do not edit. -->\n\n")
	md.WriteString("# ferry command reference\n\n")
	md.WriteString("Every `ferry` command with its flags and examples, as `ferry COMMAND --help` prints them; conventions and exit codes are under [ferry](#ferry). Man pages of the same text are in [man/](../man/).\n\n")
	cmds := allCommands(root)
	for _, c := range cmds {
		fmt.Fprintf(&md, "- [%s](#%s)\n", c.CommandPath(), anchor(c.CommandPath()))
	}
	md.WriteString("\n")
	link := func(name string) string { // ferry_machines_show.md → #ferry-machines-show
		return "#" + strings.ReplaceAll(strings.TrimSuffix(name, ".md"), "_", "-")
	}
	for _, c := range cmds {
		if err := doc.GenMarkdownCustom(c, &md, link); err != nil {
			return nil, nil, err
		}
	}
	man := map[string][]byte{}
	header := &doc.GenManHeader{Title: "FERRY", Section: "1", Source: "Ferry", Manual: "Ferry Manual", Date: &manDate}
	for _, c := range cmds {
		var b bytes.Buffer
		h := *header
		if err := doc.GenMan(c, &h, &b); err != nil {
			return nil, nil, err
		}
		man[strings.ReplaceAll(c.CommandPath(), " ", "-")+".1"] = b.Bytes()
	}
	return md.Bytes(), man, nil
}

// TestCLIReferenceIsCurrent fails when docs/cli.md or man/ differ from
// what the commands generate now (a flag, help text or command changed
// without regenerating them).
func TestCLIReferenceIsCurrent(t *testing.T) {
	mdPath := filepath.Join("..", "..", "docs", "cli.md")
	manDir := filepath.Join("..", "..", "man")
	md, man, err := generateReference(referenceRoot())
	require.NoError(t, err)
	// Twice from fresh trees: the output depends on the commands only.
	md2, man2, err := generateReference(referenceRoot())
	require.NoError(t, err)
	require.Equal(t, string(md), string(md2), "generated reference is not deterministic")
	require.Equal(t, man, man2, "generated man pages are not deterministic")
	require.NotContains(t, string(md), "Auto generated", "the auto-generated date line must be off")

	if *updateDocs {
		require.NoError(t, os.WriteFile(mdPath, md, 0o644))
		require.NoError(t, os.RemoveAll(manDir))
		require.NoError(t, os.MkdirAll(manDir, 0o755))
		for name, b := range man {
			require.NoError(t, os.WriteFile(filepath.Join(manDir, name), b, 0o644))
		}
		return
	}
	got, err := os.ReadFile(mdPath)
	require.NoError(t, err, "docs/cli.md is missing: run %s", regenerate)
	require.True(t, bytes.Equal(md, got), "docs/cli.md is stale: run %s", regenerate)
	entries, err := os.ReadDir(manDir)
	require.NoError(t, err, "man/ is missing: run %s", regenerate)
	var have, want []string
	for _, e := range entries {
		have = append(have, e.Name())
	}
	for name := range man {
		want = append(want, name)
	}
	sort.Strings(want)
	require.Equal(t, want, have, "man/ has other pages than the commands: run %s", regenerate)
	for _, name := range want {
		b, err := os.ReadFile(filepath.Join(manDir, name))
		require.NoError(t, err)
		require.True(t, bytes.Equal(man[name], b), "man/%s is stale: run %s", name, regenerate)
	}
}

// TestEveryCommandHasAnExample: each command's help shows an Example
// section (set in examples.go).
func TestEveryCommandHasAnExample(t *testing.T) {
	var missing []string
	for _, c := range allCommands(referenceRoot()) {
		if strings.TrimSpace(c.Example) == "" {
			missing = append(missing, c.CommandPath())
		}
	}
	require.Empty(t, missing, "commands without an example (add them to examples in cmd/ferry/examples.go)")
	code, stdout, _ := cli(t, "points", "export", "--help")
	require.Equal(t, exitOK, code)
	require.Contains(t, stdout, "Examples:\n  ferry points export web1")
}
