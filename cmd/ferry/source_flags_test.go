package main

import (
	"slices"
	"sort"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestHomeDriverFlags: protect and machines update define exactly the home
// options of every driver (api.HomeOptionKeys) with targets add's usage;
// protect keeps given non-empty values, update keeps empty ones too (they
// clear the option), and --insecure maps to "true" (update: "" when false).
func TestHomeDriverFlags(t *testing.T) {
	var want []string
	for _, keys := range api.HomeOptionKeys {
		for _, k := range keys {
			if !slices.Contains(want, k) {
				want = append(want, k)
			}
		}
	}
	sort.Strings(want)
	f := pflag.NewFlagSet("x", pflag.ContinueOnError)
	var h homeDriverFlags
	h.add(f)
	var got []string
	f.VisitAll(func(fl *pflag.Flag) { got = append(got, fl.Name) })
	sort.Strings(got)
	require.Equal(t, want, got)
	for _, o := range driverOptionFlags {
		if fl := f.Lookup(o.name); fl != nil {
			require.Equal(t, o.usage, fl.Usage, "one usage for %s", o.name)
		}
	}

	require.NoError(t, f.Parse([]string{"--url", "https://vc/sdk", "--credentials-file", "/c", "--insecure", "--datacenter", ""}))
	require.Equal(t, map[string]string{"url": "https://vc/sdk", "credentials-file": "/c", "insecure": "true"}, h.options(f.Changed, false))
	require.Equal(t, map[string]string{"url": "https://vc/sdk", "credentials-file": "/c", "insecure": "true", "datacenter": ""}, h.options(f.Changed, true))

	f = pflag.NewFlagSet("x", pflag.ContinueOnError)
	h = homeDriverFlags{}
	h.add(f)
	require.NoError(t, f.Parse([]string{"--insecure=false"}))
	require.Nil(t, h.options(f.Changed, false))
	require.Equal(t, map[string]string{"insecure": ""}, h.options(f.Changed, true))
	require.Nil(t, f.Lookup("datastore"), "no target-only flag at home")
}
