package catalog

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPointNotesRoundTrip: notes read back per machine by point id; a
// second record of a point replaces its note; deleting a machine's notes
// leaves other machines' alone.
func TestPointNotesRoundTrip(t *testing.T) {
	ctx := context.Background()
	c, _ := open(t)
	direct := PointNote{PointID: 4, Machine: "m", Method: "direct-read", Reason: "no reflink or snapshot view on this filesystem (ext4)"}
	require.NoError(t, c.RecordPointNote(ctx, PointNote{PointID: 3, Machine: "m", Method: "reflink"}))
	require.NoError(t, c.RecordPointNote(ctx, PointNote{PointID: 4, Machine: "m", Method: "reflink", Reason: "old"}))
	require.NoError(t, c.RecordPointNote(ctx, direct))
	require.NoError(t, c.RecordPointNote(ctx, PointNote{PointID: 7, Machine: "n", Method: "tracked-freeze", Reason: "frozen 3 ms"}))
	got, err := c.PointNotes(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, map[int64]PointNote{3: {PointID: 3, Machine: "m", Method: "reflink"}, 4: direct}, got)

	require.NoError(t, c.DeletePointNotes(ctx, "m"))
	got, err = c.PointNotes(ctx, "m")
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = c.PointNotes(ctx, "n")
	require.NoError(t, err)
	require.Len(t, got, 1)
}

// TestMigrationPointNotes: a catalog of schema 8 (before point_notes),
// holding a machine, opens with this build: it migrates to the current
// schema, keeps the machine, and records notes.
func TestMigrationPointNotes(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, p, time.Now)
	require.NoError(t, err)
	require.NoError(t, c.EnsureDefaultPolicy(ctx))
	require.NoError(t, c.AddMachine(ctx, Machine{Name: "m", AgentID: "a", Policy: DefaultPolicyName, State: StateProtected,
		ActiveSite: SiteHome, Direction: Forward}))
	_, err = c.db.Exec("DROP TABLE point_notes")
	require.NoError(t, err)
	_, err = c.db.Exec("PRAGMA user_version = 8")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	c, err = Open(ctx, p, time.Now)
	require.NoError(t, err)
	defer c.Close()
	var v int
	require.NoError(t, c.db.QueryRow("PRAGMA user_version").Scan(&v))
	require.Equal(t, SchemaVersion, v)
	_, err = c.Machine(ctx, "m")
	require.NoError(t, err, "the machine survives the migration")
	got, err := c.PointNotes(ctx, "m")
	require.NoError(t, err)
	require.Empty(t, got, "points made before the table have no note")
	require.NoError(t, c.RecordPointNote(ctx, PointNote{PointID: 1, Machine: "m", Method: "direct-read", Reason: "r"}))
	got, err = c.PointNotes(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, "r", got[1].Reason)
}
