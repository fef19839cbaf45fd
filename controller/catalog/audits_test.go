package catalog

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestPointAuditsRoundTrip: a pass's rows read back per machine with their
// damage; a later pass replaces a point's row, and drops the rows of
// points no longer retained while leaving other machines alone.
func TestPointAuditsRoundTrip(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), time.Now)
	require.NoError(t, err)
	defer c.Close()
	t1 := time.Unix(1000, 0)
	dmg := []api.PointDamage{{Disk: "d", Blocks: []int64{3, 9}, Error: "crc"}}
	require.NoError(t, c.RecordAudits(ctx, []PointAudit{
		{PointID: 1, Machine: "m", Audited: t1, Damage: dmg},
		{PointID: 2, Machine: "m", Audited: t1},
		{PointID: 5, Machine: "n", Audited: t1},
	}, nil))
	got, err := c.PointAudits(ctx, "m")
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, dmg, got[1].Damage)
	require.Empty(t, got[2].Damage)
	require.True(t, got[1].Audited.Equal(t1))

	t2 := time.Unix(2000, 0)
	require.NoError(t, c.RecordAudits(ctx, []PointAudit{{PointID: 2, Machine: "m", Audited: t2}}, map[string][]int64{"m": {2}}))
	got, err = c.PointAudits(ctx, "m")
	require.NoError(t, err)
	require.Len(t, got, 1, "point 1 is no longer retained")
	require.True(t, got[2].Audited.Equal(t2))
	n, err := c.PointAudits(ctx, "n")
	require.NoError(t, err)
	require.Len(t, n, 1, "another machine's rows stay")
}
