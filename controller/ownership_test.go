package controller

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

// TestActingAgent: the one ownership rule, read from the machine's
// lifecycle fields: the source agent at home; the agent of the target site
// while the machine is active there (failed over) or replicates from there
// (direction reverse); a test failover leaves it at home.
func TestActingAgent(t *testing.T) {
	targets := map[string]string{"site-b": "ag-b", "site-c": "ag-c"}
	lookup := func(name string) (string, error) {
		if a, ok := targets[name]; ok {
			return a, nil
		}
		return "", fmt.Errorf("target %q: %w", name, catalog.ErrNotFound)
	}
	home := catalog.Machine{Name: "m", AgentID: "ag-a", Target: "site-b", State: catalog.StateProtected, ActiveSite: "source", Direction: "forward"}
	for _, c := range []struct {
		name string
		edit func(m *catalog.Machine)
		want string
	}{
		{"at home", func(*catalog.Machine) {}, "ag-a"},
		{"test failover stays home", func(m *catalog.Machine) {
			m.State, m.Failover = catalog.StateTestFailedOver, &api.FailoverInfo{Target: "site-b", Set: "test-j1"}
		}, "ag-a"},
		{"live failover preparing stays home", func(m *catalog.Machine) {
			m.Failover = &api.FailoverInfo{Target: "site-b", Set: "live"}
		}, "ag-a"},
		{"failed over", func(m *catalog.Machine) {
			m.State, m.ActiveSite, m.Failover = catalog.StateFailedOver, "target", &api.FailoverInfo{Target: "site-b", Set: "live"}
		}, "ag-b"},
		{"failed over to the failover's target, not the configured one", func(m *catalog.Machine) {
			m.State, m.ActiveSite, m.Failover = catalog.StateFailedOver, "target", &api.FailoverInfo{Target: "site-c", Set: "live"}
		}, "ag-c"},
		{"reverse replication", func(m *catalog.Machine) {
			m.State, m.ActiveSite, m.Direction = catalog.StateReverseProtected, "target", "reverse"
		}, "ag-b"},
		{"failing back: still reverse", func(m *catalog.Machine) {
			m.State, m.Direction = catalog.StateFailingBack, "reverse"
		}, "ag-b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := home
			c.edit(&m)
			got, err := actingAgent(m, lookup)
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
	m := home
	m.ActiveSite, m.Target = "target", "gone"
	_, err := actingAgent(m, lookup)
	require.ErrorIs(t, err, catalog.ErrNotFound, "a missing target site acts for nobody")
}
