package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// figuresJS reads the overview's machine rows as `machines list --json`
// spells their fields.
const figuresJS = `[...document.querySelectorAll("#machines tr[data-machine]")].map(tr => ({
  name: tr.dataset.machine,
  state: tr.querySelector(".state").firstChild.textContent.trim(),
  active_site: tr.querySelector(".active-site").textContent.trim(),
  health: tr.querySelector("[data-health]").dataset.health,
  health_reason: (tr.querySelector(".reason") || {textContent: ""}).textContent.trim(),
  rpo_seconds: tr.querySelector(".rpo").dataset.rpoSeconds === "" ? null : Number(tr.querySelector(".rpo").dataset.rpoSeconds),
  last_point: tr.querySelector(".last-point").dataset.time,
}))`

// stepsJS reads the job page's steps as name → state.
const stepsJS = `Object.fromEntries([...document.querySelectorAll("#steps tr[data-step]")].map(r => [r.dataset.step, r.dataset.state]))`

var jobURLRE = regexp.MustCompile(`/ui/jobs/([^/?#]+)$`)

// browse drives Debian's chromium (headless, no sandbox) through the
// console with chromedp.
func (s *consoleSetup) browse(t *testing.T, chromium string) {
	arts := artifactDir(t)
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 900),
		// Trust exactly the controller's certificate (issued by its own CA).
		chromedp.Flag("ignore-certificate-errors-spki-list", s.spki),
	)
	// The browser lives as long as the context of its first run (no
	// timeout there); each step below has its own deadline.
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate("about:blank")), "start chromium")
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(bctx, 30*time.Second) }
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		require.NoError(t, chromedp.Do(ctx, actions...), what)
	}
	text := func(css string) string {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(css)))
		require.NoError(t, err, "text of %s", css)
		return v
	}
	location := func() string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Location())
		require.NoError(t, err)
		return v
	}
	shot := func(name string) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err, "screenshot "+name)
		require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")), "a PNG screenshot")
		require.NoError(t, os.WriteFile(filepath.Join(arts, name), png, 0o644))
		t.Logf("screenshot %s: %d bytes", name, len(png))
	}

	// A wrong token: refused, nothing shown.
	run("wrong token",
		chromedp.Navigate(s.base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-admin-token"),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#error")),
	)
	require.Equal(t, "Wrong token.", text("#error"))
	require.Zero(t, evaluate[int](t, bctx, `document.querySelectorAll("[data-machine]").length`), "a refused login shows no machine")
	require.Equal(t, s.base+"/ui/login", location())
	shot("login-refused.png")

	// The right token: the overview, with no token in any URL.
	shown := time.Now()
	run("login",
		chromedp.SendKeys(chromedp.CSS("#token"), s.token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#machines")),
	)
	loc := location()
	require.Equal(t, s.base+"/ui/", loc)
	require.NotContains(t, loc, s.token)
	require.Empty(t, evaluate[string](t, bctx, `document.cookie`), "the session cookie is HttpOnly: scripts cannot read it")
	cks, err := chromedp.Call(bctx, network.GetCookies, network.GetCookiesParams{URLs: []string{s.base + "/ui/"}})
	require.NoError(t, err)
	require.Len(t, cks.Cookies, 1)
	require.Equal(t, "ferry_session", cks.Cookies[0].Name)
	require.True(t, cks.Cookies[0].HTTPOnly)
	require.True(t, cks.Cookies[0].Secure)
	require.Equal(t, network.CookieSameSiteStrict, cks.Cookies[0].SameSite)

	// Two machines, their figures as `ferry machines list --json` has them.
	page := evaluate[[]machineFigures](t, bctx, figuresJS)
	var cli []machineFigures
	s.c.JSON(&cli, "machines", "list")
	between := time.Since(shown)
	require.Len(t, page, 2)
	require.Len(t, cli, 2)
	for _, want := range cli {
		i := slices.IndexFunc(page, func(f machineFigures) bool { return f.Name == want.Name })
		require.GreaterOrEqual(t, i, 0, "machine %s is on the page", want.Name)
		got := page[i]
		require.Equal(t, want.State, got.State, want.Name)
		require.Equal(t, want.ActiveSite, got.ActiveSite, want.Name)
		require.Equal(t, want.Health, got.Health, want.Name)
		require.Equal(t, want.Reason, got.Reason, want.Name)
		wantLast, err := time.Parse(time.RFC3339Nano, want.LastPoint)
		require.NoError(t, err)
		gotLast, err := time.Parse(time.RFC3339Nano, got.LastPoint)
		require.NoError(t, err, "%s: last point %q", want.Name, got.LastPoint)
		require.True(t, wantLast.Equal(gotLast), "%s: last point %s on the page, %s from the CLI", want.Name, gotLast, wantLast)
		rpoClose(t, want.Name, got.RPOSeconds, want.RPOSeconds, between)
		t.Logf("%s: %s, %s, RPO %.1fs (CLI %.1fs), health %s", got.Name, got.State, got.ActiveSite, *got.RPOSeconds, *want.RPOSeconds, got.Health)
	}
	require.Equal(t, 2, evaluate[int](t, bctx, `document.querySelectorAll("#machines svg.spark polyline").length`),
		"each machine has an RPO sparkline")
	shot("overview.png")

	// A test failover from the page: the confirmation names it, the job
	// page follows it live.
	run("confirm test failover",
		chromedp.Click(chromedp.CSS(`tr[data-machine="web"] a[data-action="test-failover"]`)),
		chromedp.WaitVisible(chromedp.CSS("#explain")),
	)
	require.Contains(t, text("#explain"), "Start a test failover of web at target dr")
	shot("confirm.png")
	run("start test failover",
		chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS("#steps")),
	)
	loc = location()
	m := jobURLRE.FindStringSubmatch(loc)
	require.NotNil(t, m, "the action leads to its job's page: %s", loc)
	job := m[1]
	s.c.Proc.WaitOutput(regexp.MustCompile(`test pause before step start of job `+regexp.QuoteMeta(job)), time.Minute)
	evaluate[bool](t, bctx, `window.ferryMarker = "same page"; true`)
	held := poll[map[string]string](t, bctx, `(() => { const s = `+stepsJS+`; return s.move === "succeeded" && (s.start === "pending" || s.start === "running") ? s : null })()`)
	require.Equal(t, "running", evaluate[string](t, bctx, `document.getElementById("job").dataset.state`))
	t.Logf("job %s held before its start step: %v", job, held)
	shot("job-running.png")

	require.NoError(t, os.WriteFile(s.release, nil, 0o644))
	done := poll[map[string]string](t, bctx, `document.getElementById("job").dataset.state === "succeeded" && document.getElementById("live").dataset.ended === "true" ? `+stepsJS+` : null`)
	require.Equal(t, "same page", evaluate[string](t, bctx, `window.ferryMarker || ""`), "the steps completed on the page without a reload")
	t.Logf("job %s completed live after %s updates: %v", job, evaluate[string](t, bctx, `document.getElementById("live").dataset.updates`), done)
	var cliJob Job
	s.c.JSON(&cliJob, "jobs", "show", job)
	require.Equal(t, "succeeded", cliJob.State)
	require.Len(t, done, len(cliJob.Steps))
	for _, st := range cliJob.Steps {
		require.Equal(t, st.State, done[st.Name], "step %s", st.Name)
	}
	require.Equal(t, "succeeded", done["start"])
	shot("job-succeeded.png")
	var web struct{ State string }
	s.c.JSON(&web, "machines", "show", "web")
	require.Equal(t, "test-failed-over", web.State)
	require.Equal(t, "running", s.site.Hyp.State("web-test"))

	// The machine's page lists its points; clean the test up from there.
	pts := s.c.Points("web")
	run("machine page",
		chromedp.Navigate(s.base+"/ui/machines/web"),
		chromedp.WaitVisible(chromedp.CSS("#points")),
	)
	require.Equal(t, len(pts), evaluate[int](t, bctx, `document.querySelectorAll("#points tr[data-point]").length`))
	require.Equal(t, strconv.FormatInt(pts[len(pts)-1].ID, 10), evaluate[string](t, bctx, `document.querySelector("#points tr[data-point]").dataset.point`),
		"the newest point first")
	require.Equal(t, pts[len(pts)-1].Consistency, text(`#points tr[data-point] .consistency`))
	shot("machine.png")
	run("confirm cleanup",
		chromedp.Click(chromedp.CSS(`a[data-action="cleanup"]`)),
		chromedp.WaitVisible(chromedp.CSS("#explain")),
	)
	require.Contains(t, text("#explain"), "Clean up web at target dr")
	run("cleanup",
		chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS("#steps")),
	)
	m = jobURLRE.FindStringSubmatch(location())
	require.NotNil(t, m)
	cleanupJob := m[1]
	poll[bool](t, bctx, `document.getElementById("job").dataset.state === "succeeded"`)
	s.c.JSON(&web, "machines", "show", "web")
	require.Equal(t, "protected", web.State)
	require.Equal(t, "stopped", s.site.Hyp.State("web-test"))

	// Agents and targets as their list commands have them; the slots for
	// plans and drills are there.
	run("agents page", chromedp.Navigate(s.base+"/ui/agents"), chromedp.WaitVisible(chromedp.CSS("#agents")))
	type agentRow struct {
		Name      string `json:"name"`
		Version   string `json:"version"`
		Platform  string `json:"platform"`
		Connected bool   `json:"connected"`
	}
	var cliAgents []agentRow
	s.c.JSON(&cliAgents, "agents", "list")
	pageAgents := evaluate[[]agentRow](t, bctx, `[...document.querySelectorAll("#agents tr[data-agent]")].map(tr => ({
  name: tr.dataset.agent, version: tr.querySelector(".version").textContent, platform: tr.querySelector(".platform").textContent,
  connected: tr.dataset.connected === "true"}))`)
	require.ElementsMatch(t, cliAgents, pageAgents)
	require.Len(t, pageAgents, 2)
	run("targets page", chromedp.Navigate(s.base+"/ui/targets"), chromedp.WaitVisible(chromedp.CSS("#targets")))
	require.Equal(t, []string{"dr"}, evaluate[[]string](t, bctx, `[...document.querySelectorAll("#targets tr[data-target]")].map(tr => tr.dataset.target)`))
	for _, slot := range []string{"plans", "drills"} {
		run(slot+" page", chromedp.Navigate(s.base+"/ui/"+slot), chromedp.WaitVisible(chromedp.CSS("h1")))
		require.Equal(t, strings.ToUpper(slot[:1])+slot[1:], text("h1"))
	}

	// Both actions are in the audit trail as the console's, with their
	// results and jobs, after a controller restart.
	s.c.Restart()
	got := s.consoleAudit(t)
	var actions []string
	for _, e := range got {
		if slices.Contains(e.Targets, "web") {
			actions = append(actions, fmt.Sprintf("%s %s %s", e.Path, e.Result, e.Job))
		}
	}
	require.Equal(t, []string{"/v1/failover ok " + job, "/v1/cleanup ok " + cleanupJob}, actions)
}

// evaluate runs a script in the page and returns its value.
func evaluate[T any](t *testing.T, bctx context.Context, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	require.NoError(t, err, "evaluate %s", js)
	return v
}

// poll waits until a script's value is truthy and returns it.
func poll[T any](t *testing.T, bctx context.Context, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Poll[T](js, chromedp.WithPollingTimeout(80*time.Second)))
	require.NoError(t, err, "waiting for %s", js)
	return v
}
