package catalog

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

func TestPlansKeepGroupsInOrderAndRefuseDuplicates(t *testing.T) {
	ctx := context.Background()
	c, _ := open(t)
	p := api.Plan{Name: "shop", Groups: []api.PlanGroup{
		{Machines: []string{"db"}, Post: []api.PlanAction{{Script: "echo db up", Undo: "echo undo"}}},
		{Machines: []string{"app1", "app2"}, Pre: []api.PlanAction{{Manual: "check DNS"}}},
	}}
	require.NoError(t, c.PutPlan(ctx, p, true))
	require.ErrorIs(t, c.PutPlan(ctx, p, true), ErrExists)

	got, err := c.Plan(ctx, "shop")
	require.NoError(t, err)
	require.Equal(t, []int{1, 2}, []int{got.Groups[0].Number, got.Groups[1].Number}, "groups numbered from 1 in order")
	require.Equal(t, []string{"db", "app1", "app2"}, got.Members())
	require.Equal(t, 2, got.GroupOf("app2"))
	require.Equal(t, "echo undo", got.Groups[0].Post[0].Undo)

	got.Groups = got.Groups[1:]
	require.NoError(t, c.PutPlan(ctx, got, false))
	all, err := c.Plans(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.Equal(t, 1, all[0].Groups[0].Number, "renumbered after a group is removed")

	require.NoError(t, c.DeletePlan(ctx, "shop"))
	require.ErrorIs(t, c.DeletePlan(ctx, "shop"), ErrNotFound)
	_, err = c.Plan(ctx, "shop")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, c.PutPlan(ctx, p, false), ErrNotFound)
}

// TestPlanKeepsMembersIPs: a member's re-IP is stored with its group in the
// plan's JSON row and read back as written (no migration: the plans table
// is unchanged).
func TestPlanKeepsMembersIPs(t *testing.T) {
	ctx := context.Background()
	c, _ := open(t)
	ips := map[string][]api.NICAddress{"db": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}, {NIC: "dmz", Address: "198.51.100.7/25"}}}
	require.NoError(t, c.PutPlan(ctx, api.Plan{Name: "shop", Groups: []api.PlanGroup{{Machines: []string{"db", "web"}, IPs: ips}}}, true))
	got, err := c.Plan(ctx, "shop")
	require.NoError(t, err)
	require.Equal(t, map[string][]api.NICAddress{"db": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}, {NIC: "dmz", Address: "198.51.100.7/25"}}}, got.Groups[0].IPs)
	require.Nil(t, got.Groups[0].IPsOf("web"))
}
