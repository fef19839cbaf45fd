package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// planEstate is a controller with one connected agent and the machines
// named protected on it (small images; hourly points: the plan tests need
// the machines to exist, not to replicate).
func planEstate(t *testing.T, agentName string, machines ...string) *served {
	t.Helper()
	s := serve(t)
	s.startAgentAllowing(t, agentName, msg.Permissions{PlanScripts: true, ExecDrivers: true})
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")
	code, _, stderr := s.cli(t, "policies", "create", "slow", "--rp-every", "1h")
	require.Equal(t, exitOK, code, stderr)
	dir := t.TempDir()
	for _, m := range machines {
		img := filepath.Join(dir, m+".img")
		require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
		code, _, stderr := s.cli(t, "protect", m, "--agent", agentName, "--disk", "d="+img, "--policy", "slow")
		require.Equal(t, exitOK, code, stderr)
	}
	return s
}

func (s *served) plan(t *testing.T, name string) api.Plan {
	t.Helper()
	code, stdout, stderr := s.cli(t, "--json", "plans", "show", name)
	require.Equal(t, exitOK, code, stderr)
	var p api.Plan
	require.NoError(t, json.Unmarshal([]byte(stdout), &p))
	return p
}

// refused runs a command that must fail with exit 1 and the given API code,
// and returns the error's message.
func (s *served) refused(t *testing.T, wantCode string, args ...string) string {
	t.Helper()
	code, _, stderr := s.cli(t, append([]string{"--json"}, args...)...)
	require.Equal(t, exitError, code, "%v: %s", args, stderr)
	e := jsonError(t, stderr)
	require.Equal(t, wantCode, e.Code, "%v: %s", args, e.Message)
	return e.Message
}

// TestCLIPlans: build a plan verb by verb against a real controller and
// agent; every refusal (unknown machine or agent, a machine in two groups,
// a group that does not exist) leaves the plan exactly as it was.
func TestCLIPlans(t *testing.T) {
	s := planEstate(t, "a1", "db", "web1", "web2", "solo")
	ok := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := s.cli(t, args...)
		require.Equal(t, exitOK, code, "%v: %s", args, stderr)
		return stdout
	}

	out := ok("plans", "create", "shop")
	require.Contains(t, out, "plan shop: 0 groups")
	s.refused(t, api.CodeConflict, "plans", "create", "shop")
	s.refused(t, api.CodeInvalid, "plans", "create", "bad name")
	s.refused(t, api.CodeInvalid, "plans", "add-machine", "shop", "--group", "1", "db") // no group yet

	ok("plans", "add-group", "shop", "db")
	ok("plans", "add-group", "shop", "web1", "web2")
	ok("plans", "add-action", "shop", "--group", "1", "--post", "--script", "echo db up", "--on", "a1", "--timeout", "2m", "--undo", "echo undo")
	ok("plans", "add-action", "shop", "--group", "2", "--pre", "--manual", "check the shop")
	ok("plans", "add-action", "shop", "--group", "2", "--pre", "--script", "echo second")
	want := api.Plan{Name: "shop", Groups: []api.PlanGroup{
		{Number: 1, Machines: []string{"db"}, Post: []api.PlanAction{{Script: "echo db up", On: "a1", Timeout: api.Duration(2 * time.Minute), Undo: "echo undo"}}},
		{Number: 2, Machines: []string{"web1", "web2"}, Pre: []api.PlanAction{{Manual: "check the shop"}, {Script: "echo second"}}},
	}}
	require.Equal(t, want, s.plan(t, "shop"))

	// Refusals, each leaving the plan as it was.
	msg := s.refused(t, api.CodeNotFound, "plans", "add-group", "shop", "ghost")
	require.Contains(t, msg, `machine "ghost" is not protected`)
	msg = s.refused(t, api.CodeInvalid, "plans", "add-machine", "shop", "--group", "2", "db")
	require.Contains(t, msg, `machine "db" is already in group 1`)
	msg = s.refused(t, api.CodeInvalid, "plans", "add-group", "shop", "solo", "solo")
	require.Contains(t, msg, `listed twice`)
	msg = s.refused(t, api.CodeInvalid, "plans", "add-machine", "shop", "--group", "3", "solo")
	require.Contains(t, msg, "groups 1 to 2, not 3")
	msg = s.refused(t, api.CodeNotFound, "plans", "add-action", "shop", "--group", "1", "--pre", "--script", "true", "--on", "ghost")
	require.Contains(t, msg, `agent "ghost" is not enrolled`)
	s.refused(t, api.CodeNotFound, "plans", "remove-machine", "shop", "solo")
	s.refused(t, api.CodeNotFound, "plans", "show", "nope")
	s.refused(t, api.CodeNotFound, "plans", "add-group", "nope", "db")
	require.Equal(t, want, s.plan(t, "shop"), "a refused edit changed the plan")

	// Usage errors reach nothing (exit 2).
	for _, args := range [][]string{
		{"plans", "add-action", "shop", "--pre", "--script", "true"},
		{"plans", "add-action", "shop", "--group", "1", "--script", "true"},
		{"plans", "add-action", "shop", "--group", "1", "--pre", "--post", "--script", "true"},
		{"plans", "add-action", "shop", "--group", "1", "--pre"},
		{"plans", "add-action", "shop", "--group", "1", "--pre", "--script", "true", "--manual", "x"},
		{"plans", "add-action", "shop", "--group", "1", "--pre", "--manual", "x", "--on", "a1"},
		{"plans", "add-action", "shop", "--group", "1", "--pre", "--script", "true", "--timeout", "soon"},
		{"plans", "add-machine", "shop", "db"},
		{"plans", "add-machine", "shop", "--group", "1"},
		{"plans", "remove-machine", "shop"},
		{"plans", "apply"},
		{"plans", "add-group"},
	} {
		code, _, stderr := s.cli(t, append([]string{"--json"}, args...)...)
		require.Equal(t, exitUsage, code, "%v: %s", args, stderr)
		require.Equal(t, "usage", jsonError(t, stderr).Code)
	}
	require.Equal(t, want, s.plan(t, "shop"))

	// Human output: one line per group, one per action.
	out = ok("plans", "show", "shop")
	require.Equal(t, `plan shop: 2 groups, 3 machines, 3 actions
group 1: db
  post 1. script "echo db up" on agent a1, timeout 2m, undo "echo undo"
group 2: web1, web2
  pre  1. manual "check the shop"
  pre  2. script "echo second" on the controller
`, out)

	// remove-machine keeps the group and its number.
	ok("plans", "remove-machine", "shop", "web2")
	ok("plans", "add-group", "shop", "web2", "solo")
	p := s.plan(t, "shop")
	require.Equal(t, []string{"web1"}, p.Groups[1].Machines)
	require.Equal(t, 3, p.Groups[2].Number)
	require.Equal(t, []string{"web2", "solo"}, p.Groups[2].Machines)

	ok("plans", "create", "other")
	ok("plans", "add-group", "other", "db") // another plan may hold the same machine
	code, stdout, stderr := s.cli(t, "--json", "plans", "list")
	require.Equal(t, exitOK, code, stderr)
	var ps []api.Plan
	require.NoError(t, json.Unmarshal([]byte(stdout), &ps))
	require.Len(t, ps, 2)
	require.Equal(t, "other", ps[0].Name)
	require.Equal(t, "shop", ps[1].Name)
	out = ok("plans", "list")
	require.Regexp(t, `(?m)^shop\s+3\s+db,web1,web2,solo\s+3$`, out)

	// A machine a plan names cannot be unprotected until it leaves the plan.
	msg = s.refused(t, api.CodeFailedPrecondition, "unprotect", "solo")
	require.Contains(t, msg, "machine solo is in recovery plan shop (group 3): remove it first (ferry plans remove-machine PLAN solo)")
	ok("plans", "remove-machine", "shop", "solo")
	ok("unprotect", "solo")

	ok("plans", "delete", "other")
	s.refused(t, api.CodeNotFound, "plans", "delete", "other")
	s.refused(t, api.CodeNotFound, "plans", "show", "other")
	code, stdout, _ = s.cli(t, "--json", "machines", "show", "db")
	require.Equal(t, exitOK, code, "deleting a plan must leave its machines protected: %s", stdout)
}

// TestCLIPlansAsCode: the example file applies, applying it again changes
// nothing and prints nothing, export gives back YAML that applies without a
// change, an edited file prints exactly its changes, and bad files are
// refused with their line numbers without changing anything.
func TestCLIPlansAsCode(t *testing.T) {
	s := planEstate(t, "dbhost", "db1", "app1", "app2", "web1")
	apply := func(file string) (int, string, string) {
		t.Helper()
		return s.cli(t, "plans", "apply", "-f", file)
	}
	example := filepath.Join("..", "..", "examples", "plans", "three-tier.yaml")
	code, stdout, stderr := apply(example)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "plan three-tier: created with 3 groups, 4 machines, 3 actions\n", stdout)
	applied := s.plan(t, "three-tier")
	require.Equal(t, []string{"app1", "app2"}, applied.Groups[1].Machines)
	require.Equal(t, api.PlanAction{Script: "/etc/ferry/wait-for-db.sh", On: "dbhost", Timeout: api.Duration(10 * time.Minute)}, applied.Groups[0].Post[0])
	require.Equal(t, "dns-switch --back app.example.com", applied.Groups[1].Pre[0].Undo)
	require.True(t, strings.HasPrefix(applied.Groups[2].Pre[0].Manual, "Check that the application answers"))

	code, stdout, stderr = apply(example)
	require.Equal(t, exitOK, code, stderr)
	require.Empty(t, stdout, "applying an unchanged file must print nothing")

	code, exported, stderr := s.cli(t, "plans", "export", "three-tier")
	require.Equal(t, exitOK, code, stderr)
	dir := t.TempDir()
	file := filepath.Join(dir, "plan.yaml")
	require.NoError(t, os.WriteFile(file, []byte(exported), 0o600))
	code, stdout, stderr = apply(file)
	require.Equal(t, exitOK, code, stderr)
	require.Empty(t, stdout, "the exported plan applied back changed something:\n%s", exported)
	require.Equal(t, applied, s.plan(t, "three-tier"))

	// An edit: web1 moves into group 2, group 3 goes, the timeout changes.
	edited := `name: three-tier
groups:
  - machines: [db1]
    post:
      - script: /etc/ferry/wait-for-db.sh
        on: dbhost
        timeout: 5m
  - machines: [app1, app2, web1]
    pre:
      - script: dns-switch app.example.com "$FERRY_DIRECTION"
        timeout: 2m
        undo: dns-switch --back app.example.com
`
	require.NoError(t, os.WriteFile(file, []byte(edited), 0o600))
	code, stdout, stderr = s.cli(t, "plans", "apply", "-f", file)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, `plan three-tier: group 1: post action 1 changed: script "/etc/ferry/wait-for-db.sh" on agent dbhost, timeout 5m
plan three-tier: group 2: machine web1 added
plan three-tier: group 3 removed (web1)
`, stdout)
	before := s.plan(t, "three-tier")
	require.Len(t, before.Groups, 2)

	// Bad files: every problem with its line; nothing applied.
	for name, tc := range map[string]struct {
		yaml string
		want []string
	}{
		"unknown keys": {`name: three-tier
groups:
  - machines: [db1]
    prre:
      - script: true
  - machines: [app1]
    post:
      - script: x
        timeuot: 5m
colour: blue
`, []string{`:4: unknown key "prre" in a group`, `:9: unknown key "timeuot" in an action`, `:10: unknown key "colour" in a plan`}},
		"unknown machine and agent": {`name: three-tier
groups:
  - machines:
      - db1
      - db9
    post:
      - script: x
        on: nohost
`, []string{`:5: machine "db9" is not protected`, `:8: agent "nohost" is not enrolled`}},
		"machine in two groups": {`name: three-tier
groups:
  - machines: [db1, app1]
  - machines:
      - app2
      - db1
`, []string{`:6: machine "db1" is already in group 1 (line 3)`}},
		"bad actions": {`name: three-tier
groups:
  - machines: [db1]
    pre:
      - manual: look
        on: dbhost
      - timeout: 1m
      - script: x
        timeout: soon
`, []string{`:5: a manual action takes no agent`, `:7: an action needs a script or a manual text`, `:9: timeout: invalid duration "soon"`}},
		"not yaml": {"name: [unclosed\n", []string{"plan.yaml: "}},
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(file, []byte(tc.yaml), 0o600))
			code, stdout, stderr := s.cli(t, "--json", "plans", "apply", "-f", file)
			require.Equal(t, exitError, code, stdout)
			e := jsonError(t, stderr)
			require.Equal(t, api.CodeInvalid, e.Code)
			for _, w := range tc.want {
				require.Contains(t, e.Message, w)
			}
			require.Equal(t, before, s.plan(t, "three-tier"), "a refused file changed the plan")
		})
	}
}

// TestCLIAgentPermissions: agents list shows what each connected agent
// allows; a plan script action on an agent that did not opt in, and exec
// driver commands for a target or a machine on one, are refused when they
// are set up, with the error naming the flag; the agent that opted in
// takes them.
func TestCLIAgentPermissions(t *testing.T) {
	s := serve(t)
	s.startAgentAllowing(t, "locked", msg.Permissions{})
	s.startAgentAllowing(t, "open", msg.Permissions{PlanScripts: true, ExecDrivers: true})
	var as []api.Agent
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		if code != exitOK || json.Unmarshal([]byte(stdout), &as) != nil || len(as) != 2 {
			return false
		}
		return as[0].Connected && as[1].Connected && as[0].Allows != nil && as[1].Allows != nil
	}, 30*time.Second, 50*time.Millisecond, "the agents never showed as connected with their permissions")
	require.Equal(t, "locked", as[0].Name)
	require.Equal(t, api.AgentPermissions{}, *as[0].Allows)
	require.Equal(t, api.AgentPermissions{PlanScripts: true, ExecDrivers: true}, *as[1].Allows)
	code, stdout, stderr := s.cli(t, "agents", "list")
	require.Equal(t, exitOK, code, stderr)
	require.Regexp(t, `(?m)^locked\s.*\snone$`, stdout)
	require.Regexp(t, `(?m)^open\s.*\splan-scripts,exec-drivers$`, stdout)

	img := filepath.Join(t.TempDir(), "m.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	code, _, stderr = s.cli(t, "protect", "m", "--agent", "open", "--disk", "d="+img)
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "plans", "create", "p")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "plans", "add-group", "p", "m")
	require.Equal(t, exitOK, code, stderr)

	msgText := s.refused(t, api.CodeFailedPrecondition, "plans", "add-action", "p", "--group", "1", "--pre", "--script", "true", "--on", "locked")
	require.Contains(t, msgText, "plan scripts are not allowed on agent locked: install or run it with --allow-plan-scripts")
	code, _, stderr = s.cli(t, "plans", "add-action", "p", "--group", "1", "--pre", "--script", "true", "--on", "open")
	require.Equal(t, exitOK, code, stderr)
	// A plan file naming the locked agent is refused as a whole.
	file := filepath.Join(t.TempDir(), "p.yaml")
	require.NoError(t, os.WriteFile(file, []byte("name: p\ngroups:\n  - machines: [m]\n    post:\n      - script: 'true'\n        on: locked\n"), 0o600))
	msgText = s.refused(t, api.CodeInvalid, "plans", "apply", "-f", file)
	require.Contains(t, msgText, "p.yaml:6: plan scripts are not allowed on agent locked: install or run it with --allow-plan-scripts")
	require.Len(t, s.plan(t, "p").Groups[0].Pre, 1, "the refused file changed the plan")
	require.Empty(t, s.plan(t, "p").Groups[0].Post)

	dir := t.TempDir()
	msgText = s.refused(t, api.CodeFailedPrecondition, "targets", "add", "dr1", "--agent", "locked", "--dir", dir, "--start", "true")
	require.Contains(t, msgText, "exec driver commands are not allowed on agent locked: install or run it with --allow-exec-drivers")
	code, _, stderr = s.cli(t, "targets", "add", "dr3", "--agent", "open", "--dir", dir, "--start", "true")
	require.Equal(t, exitOK, code, stderr)

	img2 := filepath.Join(t.TempDir(), "n.img")
	require.NoError(t, os.WriteFile(img2, make([]byte, 1<<20), 0o600))
	msgText = s.refused(t, api.CodeFailedPrecondition, "protect", "n", "--agent", "locked", "--disk", "d="+img2, "--stop", "true")
	require.Contains(t, msgText, "--allow-exec-drivers")
	s.refused(t, api.CodeNotFound, "machines", "show", "n")
}
