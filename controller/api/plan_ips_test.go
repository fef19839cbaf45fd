package api

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOverrideIPs: the plan's address replaces the machine's own for the
// NICs it names, in place; the others keep the machine's; a NIC only the
// plan names is added.
func TestOverrideIPs(t *testing.T) {
	own := []NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}, {NIC: "dmz", Address: "10.1.0.5/24"}}
	require.Equal(t, own, OverrideIPs(own, nil))
	plan := []NICAddress{{NIC: "dmz", Address: "192.0.2.9/24"}, {NIC: "mgmt", Address: "198.51.100.2/25", Gateway: "198.51.100.1"}}
	require.Equal(t, []NICAddress{own[0], plan[0], plan[1]}, OverrideIPs(own, plan))
	require.Equal(t, []NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}, {NIC: "dmz", Address: "10.1.0.5/24"}}, own, "the machine's own list is not changed")
	require.Equal(t, plan, OverrideIPs(nil, plan))
}

// TestPlanIPChanges: apply says when a member's re-IP is set, changed or
// removed.
func TestPlanIPChanges(t *testing.T) {
	old := Plan{Name: "p", Groups: []PlanGroup{{Number: 1, Machines: []string{"a", "b"}}}}
	set := Plan{Name: "p", Groups: []PlanGroup{{Number: 1, Machines: []string{"a", "b", "c"},
		IPs: map[string][]NICAddress{"a": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}}, "c": {{NIC: "lan", Address: "192.0.2.6/24"}}}}}}
	require.Equal(t, []string{"plan p: group 1: machine c added (re-IP lan=192.0.2.6/24)", "plan p: group 1: machine a re-IP lan=192.0.2.5/24,192.0.2.1"}, Changes(&old, set))
	require.Empty(t, Changes(&set, set))
	old.Groups[0].Machines = set.Groups[0].Machines
	grown := Plan{Name: "p", Groups: append(slices.Clone(old.Groups), PlanGroup{Number: 2, Machines: []string{"d"}, IPs: map[string][]NICAddress{"d": {{NIC: "lan", Address: "192.0.2.7/24"}}}})}
	require.Equal(t, []string{"plan p: group 2 added (d; 0 actions)", "plan p: group 2: machine d re-IP lan=192.0.2.7/24"}, Changes(&old, grown))
	require.Equal(t, []string{"plan p: group 1: machine a re-IP removed (the machine's own --ip apply)", "plan p: group 1: machine c re-IP removed (the machine's own --ip apply)"}, Changes(&set, old))
}
