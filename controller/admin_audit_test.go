package controller

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestDamageDetailNamesPointDiskAndBlock: the health reason's detail names
// the damaged points (only those damaged now) with the disk and blocks the
// last audit found, the first few, and says how many more there are.
func TestDamageDetailNamesPointDiskAndBlock(t *testing.T) {
	a := &api.MachineAudit{Points: []api.PointAudit{
		{PointID: 1, Damaged: false, Damage: []api.PointDamage{{Disk: "d", Blocks: []int64{2}}}}, // repaired since
		{PointID: 3, Damaged: true, Damage: []api.PointDamage{{Disk: "d", Blocks: []int64{9}}}},
		{PointID: 4, Damaged: true, Damage: []api.PointDamage{{Disk: "d", Blocks: []int64{1, 2, 3, 4, 5}}, {Disk: "e", Blocks: []int64{7}}}},
		{PointID: 5, Damaged: true, Damage: []api.PointDamage{{Disk: "d", Blocks: []int64{8}}}},
		{PointID: 6, Damaged: true}, // found by ferry verify, not audited since
	}}
	require.Equal(t, "point 3 disk d block 9, point 4 disk d blocks 1,2,3,4,… (5 in all), point 4 disk e block 7, 2 more",
		damageDetail(a))
}
