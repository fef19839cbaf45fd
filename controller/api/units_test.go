package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90s": 90 * time.Second, "5m": 5 * time.Minute, "2h": 2 * time.Hour,
		"7d": 7 * 24 * time.Hour, "1h30m": 90 * time.Minute, "0.5d": 12 * time.Hour,
	} {
		got, err := ParseDuration(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got.Std(), in)
	}
	for _, bad := range []string{"", "5", "-1s", "xd", "5 minutes"} {
		_, err := ParseDuration(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "7d", Duration(7*24*time.Hour).String())
	require.Equal(t, "30s", Duration(30*time.Second).String())
	require.Equal(t, "1h", Duration(time.Hour).String())
	require.Equal(t, "5m", Duration(5*time.Minute).String())
	b, err := json.Marshal(Duration(90 * time.Second))
	require.NoError(t, err)
	var d Duration
	require.NoError(t, json.Unmarshal(b, &d))
	require.Equal(t, Duration(90*time.Second), d)
}

func TestParseSizeAndRate(t *testing.T) {
	for in, want := range map[string]int64{"64KiB": 64 << 10, "2GiB": 2 << 30, "100MB": 100e6, "512": 512, "1.5MiB": 3 << 19} {
		got, err := ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	r, err := ParseRate("100MiB/s")
	require.NoError(t, err)
	require.Equal(t, int64(100<<20), r)
	for _, bad := range []string{"", "KiB", "-1", "1XB", "1e30TiB"} {
		_, err := ParseSize(bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "64KiB", FormatSize(64<<10))
	require.Equal(t, "1.5GiB", FormatSize(3<<29))
	require.Equal(t, "12B", FormatSize(12))
}

// TestDurationYAML: plans as code write and read durations in the CLI's
// unit form, and JSON keeps its string form.
func TestDurationYAML(t *testing.T) {
	a := PlanAction{Script: "x", Timeout: Duration(90 * time.Second)}
	b, err := yaml.Marshal(a)
	require.NoError(t, err)
	require.Contains(t, string(b), "timeout: 1m30s")
	var back PlanAction
	require.NoError(t, yaml.Unmarshal([]byte("script: x\ntimeout: 2d\n"), &back))
	require.Equal(t, Duration(48*time.Hour), back.Timeout)
	require.Error(t, yaml.Unmarshal([]byte("script: x\ntimeout: soon\n"), &back))
	j, err := json.Marshal(a)
	require.NoError(t, err)
	require.Contains(t, string(j), `"timeout":"1m30s"`)
}
