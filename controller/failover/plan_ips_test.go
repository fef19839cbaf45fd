package failover_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// TestPlanIPsReachTheDriver: machine m was protected with --ip for both
// its NICs and fails over to a libvirt target. Alone, its start request
// carries its own addresses; in a plan that re-IPs lan, the start request
// carries the plan's address for lan and still m's own for dmz.
func TestPlanIPsReachTheDriver(t *testing.T) {
	own := []api.NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}, {NIC: "dmz", Address: "10.1.0.5/24"}}
	for _, tc := range []struct {
		name string
		plan *failover.PlanRun
		want []msg.MachineNIC
	}{
		{"machine alone", nil, []msg.MachineNIC{
			{Name: "lan", Network: "br-lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"},
			{Name: "dmz", Network: "br-dmz", Address: "10.1.0.5/24"}}},
		{"in a plan", &failover.PlanRun{Name: "p", Groups: []api.PlanGroup{{Number: 1, Machines: []string{"m"},
			IPs: map[string][]api.NICAddress{"m": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}}}}}}, []msg.MachineNIC{
			{Name: "lan", Network: "br-lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"},
			{Name: "dmz", Network: "br-dmz", Address: "10.1.0.5/24"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var starts []msg.TargetDriverRequest
			var first storage.Point
			r, first := newRig(t, func(n int, method string, req, resp any) error {
				switch method {
				case msg.MethodTargetStatus:
					liveAt(n, first.ID, resp)
				case msg.MethodTargetDriver + ":start":
					mu.Lock()
					starts = append(starts, req.(msg.TargetDriverRequest))
					mu.Unlock()
				case msg.MethodTargetDriver + ":status":
					mu.Lock()
					if len(starts) > 0 {
						resp.(*msg.DriverResponse).Status = "running"
					}
					mu.Unlock()
				}
				return nil
			})
			ctx := context.Background()
			require.NoError(t, r.cat.AddTarget(ctx, "ag-dst", api.Target{Name: "kvm", Agent: "dst", Dir: "/srv/dr", Driver: api.DriverLibvirt, Format: "raw",
				Networks: map[string]string{"lan": "br-lan", "dmz": "br-dmz"}}))
			m, err := r.cat.Machine(ctx, "m")
			require.NoError(t, err)
			m.Target, m.Spec.Target, m.Spec.NICs, m.Spec.IPs = "kvm", "kvm", []string{"lan", "dmz"}, own
			require.NoError(t, r.cat.UpdateMachine(ctx, m))

			spec := failover.Spec{Machines: []string{"m"}, Req: api.FailoverRequest{Machine: "m", Point: "latest-processed"}, Plan: tc.plan}
			if tc.plan != nil {
				spec.Req.Machine, spec.Req.Plan = "", tc.plan.Name
			}
			j, err := r.jobs.Start(ctx, failover.KindFailover, []string{"m"}, spec, time.Minute)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				j, err = r.jobs.Get(ctx, j.ID)
				require.NoError(t, err)
				return api.Terminal(j.State)
			}, 45*time.Second, 20*time.Millisecond)
			require.Equal(t, api.JobSucceeded, j.State, "job: %s %v", j.Error, j.Notes)
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, starts, 1)
			require.NotNil(t, starts[0].Hypervisor.Spec)
			require.Equal(t, tc.want, starts[0].Hypervisor.Spec.NICs)
		})
	}
}
