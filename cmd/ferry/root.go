package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/cliflags"
)

// Exit codes of CLI.md.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitJobFailed   = 3
	exitJobPartial  = 4
	exitUnreachable = 69
)

// defaultDataDir is where `ferry serve` keeps its state unless told.
const defaultDataDir = "/var/lib/ferry"

// globals are the flags every admin command shares.
type globals struct {
	admin      string
	adminToken string
	adminCA    string
	json       bool
	stdout     io.Writer
	stderr     io.Writer
}

// usageError marks a wrong invocation (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError carries a specific exit code (a job's outcome).
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCodeOf(err)
	if !g.json && slices.Contains(args, "--json") {
		g.json = true // cobra refused the command line before parsing --json
	}
	printError(g, err)
	return code
}

func exitCodeOf(err error) int {
	var ue *usageError
	var ec *exitCodeError
	switch {
	case errors.As(err, &ec):
		return ec.code
	case errors.As(err, &ue), isCobraUsage(err):
		return exitUsage
	case errors.Is(err, admin.ErrUnreachable):
		return exitUnreachable
	}
	return exitError
}

// printError writes the error as text, or as {"code","message"} with --json.
func printError(g *globals, err error) {
	if g.json {
		var ae *api.Error
		out := api.Error{Code: api.CodeInternal, Message: err.Error()}
		var ue *usageError
		switch {
		case errors.As(err, &ae):
			out = *ae
		case errors.As(err, &ue), isCobraUsage(err):
			out.Code = "usage"
		case errors.Is(err, admin.ErrUnreachable):
			out.Code = api.CodeUnavailable
		}
		json.NewEncoder(g.stderr).Encode(out)
		return
	}
	fmt.Fprintln(g.stderr, "ferry:", err)
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Ferry site recovery: controller and admin CLI",
		Long: `Ferry keeps servers recoverable at a second site and moves them there
(failover) and back (failback). 'ferry serve' runs the controller; the other
commands administer it through its admin API, found through --admin or
FERRY_ADMIN (default: the admin socket in /var/lib/ferry).

Output is for people by default; --json prints JSON (errors too, as
{"code": …, "message": …} on stderr). No command prompts: one that needs a
confirmation takes --force instead. Durations take s m h d (90s, 5m, 7d); sizes IEC units (64KiB);
rates bytes per second (100MiB/s). Job-starting commands print the job id,
or with --wait follow the job and exit with its outcome.

Exit codes: 0 success, 1 error, 2 usage error, 3 the job failed, 4 the job
ended partial (some machines failed), 69 controller unreachable.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cliflags.WithSuggestion(cmd, err).Error()}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.admin, "admin", "", "admin socket path or https:// URL (default $FERRY_ADMIN or "+filepath.Join(defaultDataDir, "admin.sock")+")")
	pf.StringVar(&g.adminToken, "admin-token", "", "bearer token for TCP admin access (default $FERRY_ADMIN_TOKEN)")
	pf.StringVar(&g.adminCA, "admin-ca", "", "CA certificate to verify an https admin address (default $FERRY_ADMIN_CA)")
	pf.BoolVar(&g.json, "json", false, "machine-readable output (errors as JSON on stderr)")

	root.AddCommand(
		newServeCommand(g),
		newTokensCommand(g),
		newAgentsCommand(g),
		newInventoryCommand(g),
		newPoliciesCommand(g),
		newProtectCommand(g),
		newUnprotectCommand(g),
		newStatusCommand(g),
		newMachinesCommand(g),
		newPointsCommand(g),
		newTargetsCommand(g),
		newPlansCommand(g),
		newFailoverCommand(g),
		newActionCommand(g, "commit", "End a failover or an unplanned failback: delete the machine's recovery points but those a re-protect needs (change-point is no longer possible)", false),
		newActionCommand(g, "change-point", "Move a failed-over (or failed-back: its home disks) machine to another point, keeping the writes made there as a named point", true),
		newActionCommand(g, "cleanup", "End a test failover: stop and remove the test machine and its disks", false),
		newReprotectCommand(g),
		newFailbackCommand(g),
		newActionCommand(g, "revert", "Undo an uncommitted failover: stop the machine at its recovery site, keep the writes made there as a named point, start it at home and replicate from there again", false),
		newDrillsCommand(g),
		newCancelCommand(g),
		newJobsCommand(g),
		newKeysCommand(g),
		newVerifyCommand(g),
		newGCCommand(g),
		newAuditCommand(g),
		newAlertsCommand(g),
		newVersionCommand(g),
	)
	finishCommands(g, root)
	return root
}

// client builds the admin client from flags and environment.
func (g *globals) client() (*admin.Client, error) {
	addr := g.admin
	if addr == "" {
		addr = os.Getenv("FERRY_ADMIN")
	}
	if addr == "" {
		addr = filepath.Join(defaultDataDir, "admin.sock")
	}
	token := g.adminToken
	if token == "" {
		token = os.Getenv("FERRY_ADMIN_TOKEN")
	}
	ca := g.adminCA
	if ca == "" {
		ca = os.Getenv("FERRY_ADMIN_CA")
	}
	return admin.NewClient(admin.ClientConfig{Address: addr, Token: token, CAFile: ca})
}

// printJSON writes v as indented JSON.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("want %s", what)
		}
		return nil
	}
}

// jsonLine encodes v compactly with a newline (NDJSON).
func jsonLine(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return append(b, '\n'), err
}
