package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestParseNetworkMapAndIPs: --network SRC=DST and --ip NIC=ADDR/PREFIX[,GW]
// parse into the request; malformed or duplicate flags are usage errors.
func TestParseNetworkMapAndIPs(t *testing.T) {
	m, err := parseNetworkMap([]string{"lan=dr-lan", "dmz=bridge:br0"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"lan": "dr-lan", "dmz": "bridge:br0"}, m)
	m, err = parseNetworkMap(nil)
	require.NoError(t, err)
	require.Nil(t, m)
	for _, bad := range [][]string{{"lan"}, {"=x"}, {"lan="}, {"lan=a", "lan=b"}} {
		_, err := parseNetworkMap(bad)
		require.Error(t, err, "%v", bad)
		var ue *usageError
		require.ErrorAs(t, err, &ue, "%v", bad)
	}
	ips, err := parseIPs([]string{"lan=10.0.0.5/24,10.0.0.1", "dmz=192.0.2.9/28"})
	require.NoError(t, err)
	require.Equal(t, []api.NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}, {NIC: "dmz", Address: "192.0.2.9/28"}}, ips)
	for _, bad := range []string{"lan", "=10.0.0.5/24", "lan=,10.0.0.1"} {
		_, err := parseIPs([]string{bad})
		require.Error(t, err, bad)
	}
}
