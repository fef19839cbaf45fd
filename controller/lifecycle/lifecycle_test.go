package lifecycle

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/catalog"
)

var updateDoc = flag.Bool("update-doc", false, "rewrite the table in docs/failover.md")

const docPath = "../../docs/failover.md"

const (
	beginMark = "<!-- lifecycle:begin -->\n"
	endMark   = "<!-- lifecycle:end -->"
)

// TestDocShowsTheTable: docs/failover.md shows the lifecycle table as the
// code has it (go test ./controller/lifecycle -update-doc rewrites it).
func TestDocShowsTheTable(t *testing.T) {
	b, err := os.ReadFile(docPath)
	require.NoError(t, err)
	doc := string(b)
	i, j := strings.Index(doc, beginMark), strings.Index(doc, endMark)
	require.True(t, i >= 0 && j > i, "docs/failover.md has no lifecycle markers")
	got, want := doc[i+len(beginMark):j], Markdown()
	if *updateDoc {
		require.NoError(t, os.WriteFile(docPath, []byte(doc[:i+len(beginMark)]+want+doc[j:]), 0o644))
		return
	}
	require.Equal(t, want, got, "docs/failover.md shows another table than the code: run go test ./controller/lifecycle -update-doc")
}

// TestEveryPairIsDecided: every state × action pair is a cell of the table
// (none falls through to the default), and every refusal says why and
// what to do instead.
func TestEveryPairIsDecided(t *testing.T) {
	for _, st := range States {
		for _, a := range Actions {
			r, ok := table[cell{st, a}]
			require.True(t, ok, "no cell for %s × %s", st, a)
			if r.Allowed() {
				require.NotEmpty(t, r.Next, "%s × %s", st, a)
				require.Empty(t, r.Instead)
			} else {
				require.NotEmpty(t, r.Instead, "%s × %s says what to do instead", st, a)
			}
		}
	}
	require.Len(t, table, len(States)*len(Actions), "no cell outside States × Actions")
	require.Empty(t, Allowed(catalog.StateUnprotected), "a state without a row allows nothing")
	require.Equal(t, []string{"unprotect", "reprotect"}, Allowed(catalog.StateCommitted), "a committed machine can only be re-protected or unprotected")
	require.Equal(t, []string{"points export", "unprotect", "failback", "failback --unplanned", "failback --test"}, Allowed(catalog.StateReverseProtected))
	require.Equal(t, []string{"commit", "change-point", "points export"}, Allowed(catalog.StateFailedBack), "failed-back allows what failed-over does")
	require.Equal(t, []string{"cleanup", "points export", "failback", "failback --unplanned"}, Allowed(catalog.StateTestFailedBack),
		"a failback test is ended by cleanup, or by a failback (which cleans it up first)")
	require.Equal(t, catalog.StateReverseProtected, Lookup(catalog.StateTestFailedBack, Cleanup).Next)
	require.Equal(t, []string{"points export", "unprotect", "reprotect"}, Allowed(catalog.StateBackHome))
}

// TestDisasterBeatsTest: a failover or failback of a machine under a test
// (a test failover, a failback test, a drill) is allowed, after a cleanup.
func TestDisasterBeatsTest(t *testing.T) {
	for _, c := range []struct {
		state string
		a     Action
		next  string
	}{
		{catalog.StateTestFailedOver, Failover, catalog.StateFailedOver},
		{catalog.StateTestFailedOver, PlannedFailover, catalog.StateFailedOver},
		{catalog.StateTestFailedBack, Failback, catalog.StateBackHome},
		{catalog.StateTestFailedBack, UnplannedFailback, catalog.StateFailedBack},
	} {
		r := Lookup(c.state, c.a)
		require.True(t, r.Allowed(), "%s × %s", c.state, c.a)
		require.Equal(t, Cleanup, r.First, "%s × %s cleans the test up first", c.state, c.a)
		require.Equal(t, c.next, r.Next)
		require.True(t, Lookup(c.state, r.First).Allowed(), "the first action is allowed in %s", c.state)
	}
	require.Empty(t, Lookup(catalog.StateProtected, Failover).First, "nothing to clean up before a plain failover")
}

func TestRefusalNamesTheMachine(t *testing.T) {
	err := Check("web", catalog.StateTestFailedOver, TestFailover)
	require.EqualError(t, err, "machine web is test-failed-over: failover --test is not possible: a test failover is already running; instead: end it with 'ferry cleanup web' first")
	require.NoError(t, Check("web", catalog.StateProtected, Failover))
	require.True(t, Reaches(Commit, catalog.StateCommitted))
	require.False(t, Reaches(Commit, catalog.StateProtected))
}
