package catalog

import (
	"fmt"
	"io/fs"
	"sort"
	"testing"
)

// TestMigrationsAreNumberedOnce guards the append-only migration list: the
// runner applies every file numbered above the database's user_version, so
// two files with one number (two changes merged side by side) would leave a
// database that ran only the first one silently without the second.
func TestMigrationsAreNumberedOnce(t *testing.T) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for i, name := range names {
		var n int
		if _, err := fmt.Sscanf(name, "%04d_", &n); err != nil {
			t.Fatalf("migration %q is not named NNNN_what.sql", name)
		}
		if n != i+1 {
			t.Fatalf("migration %q has number %d, want %d: numbers run 1, 2, 3 … without gaps or repeats (%v)", name, n, i+1, names)
		}
	}
	if len(names) != SchemaVersion {
		t.Fatalf("%d migrations but SchemaVersion = %d", len(names), SchemaVersion)
	}
}
