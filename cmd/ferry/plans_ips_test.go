package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestCLIPlanIPs: add-machine --ip stores a member's re-IP with the plan
// (show, --json); bad values are refused (usage errors for the form, the
// controller's refusal for a NIC the machine does not have) and leave the
// plan as it was; remove-machine drops it.
func TestCLIPlanIPs(t *testing.T) {
	s := planEstate(t, "a1")
	ok := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := s.cli(t, args...)
		require.Equal(t, exitOK, code, "%v: %s", args, stderr)
		return stdout
	}
	img := filepath.Join(t.TempDir(), "db.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	ok("protect", "db", "--agent", "a1", "--disk", "d="+img, "--policy", "slow", "--nic", "lan", "--nic", "dmz",
		"--ip", "lan=10.0.0.5/24,10.0.0.1")
	ok("plans", "create", "shop")
	ok("plans", "add-group", "shop")
	before := s.plan(t, "shop")

	for _, args := range [][]string{
		{"plans", "add-machine", "shop", "--group", "1", "db", "--ip", "lan"},                     // no =
		{"plans", "add-machine", "shop", "--group", "1", "db", "--ip", "lan=192.0.2.5"},           // no prefix
		{"plans", "add-machine", "shop", "--group", "1", "db", "--ip", "lan=192.0.2.5/24,gw"},     // bad gateway
		{"plans", "add-machine", "shop", "--group", "1", "db", "db2", "--ip", "lan=192.0.2.5/24"}, // two machines
	} {
		code, _, stderr := s.cli(t, append([]string{"--json"}, args...)...)
		require.Equal(t, exitUsage, code, "%v: %s", args, stderr)
	}
	msg := s.refused(t, api.CodeInvalid, "plans", "add-machine", "shop", "--group", "1", "db", "--ip", "wan=192.0.2.5/24")
	require.Contains(t, msg, "--ip wan: the machine has no --nic wan")
	msg = s.refused(t, api.CodeInvalid, "plans", "add-machine", "shop", "--group", "1", "db", "--ip", "lan=192.0.2.5/24", "--ip", "lan=192.0.2.6/24")
	require.Contains(t, msg, "--ip lan given twice")
	require.Equal(t, before, s.plan(t, "shop"), "a refused add-machine changed the plan")

	out := ok("plans", "add-machine", "shop", "--group", "1", "db", "--ip", "lan=192.0.2.5/24,192.0.2.1", "--ip", "dmz=198.51.100.7/25")
	require.Contains(t, out, "group 1: db\n  re-IP db: lan=192.0.2.5/24,192.0.2.1 dmz=198.51.100.7/25\n")
	want := map[string][]api.NICAddress{"db": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}, {NIC: "dmz", Address: "198.51.100.7/25"}}}
	require.Equal(t, want, s.plan(t, "shop").Groups[0].IPs)
	code, stdout, stderr := s.cli(t, "--json", "plans", "show", "shop")
	require.Equal(t, exitOK, code, stderr)
	var raw struct {
		Groups []struct {
			IPs map[string][]map[string]string `json:"ips"`
		} `json:"groups"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &raw))
	require.Equal(t, []map[string]string{{"nic": "lan", "address": "192.0.2.5/24", "gateway": "192.0.2.1"}, {"nic": "dmz", "address": "198.51.100.7/25"}},
		raw.Groups[0].IPs["db"], "plans show --json")

	ok("plans", "remove-machine", "shop", "db")
	require.Equal(t, before, s.plan(t, "shop"), "remove-machine must drop the member's re-IP")
}

// TestCLIPlanIPsAsCode: a member's "ips" in plan YAML applies, exports as
// the same YAML (kept here byte for byte) and applies back unchanged; an
// edited address prints its change; bad entries are refused with their
// line numbers and change nothing.
func TestCLIPlanIPsAsCode(t *testing.T) {
	s := planEstate(t, "a1", "web")
	img := filepath.Join(t.TempDir(), "db.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	code, _, stderr := s.cli(t, "protect", "db", "--agent", "a1", "--disk", "d="+img, "--policy", "slow", "--nic", "lan", "--nic", "dmz")
	require.Equal(t, exitOK, code, stderr)

	const file1 = `# Ferry recovery plan shop: ferry plans apply -f FILE
name: shop
groups:
  # group 1
  - machines:
      - name: db
        ips:
          - lan=192.0.2.5/24,192.0.2.1
          - dmz=198.51.100.7/25
      - web
`
	dir := t.TempDir()
	file := filepath.Join(dir, "plan.yaml")
	require.NoError(t, os.WriteFile(file, []byte(file1), 0o600))
	code, stdout, stderr := s.cli(t, "plans", "apply", "-f", file)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "plan shop: created with 1 groups, 2 machines, 0 actions\n", stdout)
	p := s.plan(t, "shop")
	require.Equal(t, []string{"db", "web"}, p.Groups[0].Machines)
	require.Equal(t, map[string][]api.NICAddress{"db": {{NIC: "lan", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}, {NIC: "dmz", Address: "198.51.100.7/25"}}}, p.Groups[0].IPs)

	code, exported, stderr := s.cli(t, "plans", "export", "shop")
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, file1, exported, "export writes the member with its ips as a mapping")
	code, stdout, stderr = s.cli(t, "plans", "apply", "-f", file)
	require.Equal(t, exitOK, code, stderr)
	require.Empty(t, stdout, "applying the exported plan back changed something")

	edited := `name: shop
groups:
  - machines:
      - name: db
        ips: [lan=192.0.2.9/24]
      - name: web
`
	require.NoError(t, os.WriteFile(file, []byte(edited), 0o600))
	code, stdout, stderr = s.cli(t, "plans", "apply", "-f", file)
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, "plan shop: group 1: machine db re-IP lan=192.0.2.9/24\n", stdout)
	before := s.plan(t, "shop")
	require.Equal(t, map[string][]api.NICAddress{"db": {{NIC: "lan", Address: "192.0.2.9/24"}}}, before.Groups[0].IPs)

	for name, tc := range map[string]struct {
		yaml string
		want []string
	}{
		"bad values": {`name: shop
groups:
  - machines:
      - name: db
        ips:
          - lan=192.0.2.9
          - dmz
          - lan=192.0.2.9/24,gateway
`, []string{`:6: --ip lan=192.0.2.9: want ADDR/PREFIX`, `:7: --ip "dmz": want NIC=ADDR/PREFIX[,GATEWAY]`, `:8: --ip lan gateway "gateway"`}},
		"unknown nic": {`name: shop
groups:
  - machines:
      - web
      - name: db
        ips:
          - lan=192.0.2.9/24
          - wan=192.0.2.10/24
`, []string{`:8: machine db: --ip wan: the machine has no --nic wan`}},
		"nic twice": {`name: shop
groups:
  - machines:
      - name: db
        ips: [lan=192.0.2.9/24, lan=192.0.2.10/24]
`, []string{`:5: machine db: --ip lan given twice`}},
		"machine twice": {`name: shop
groups:
  - machines:
      - web
  - machines:
      - name: web
        ips: [lan=192.0.2.11/24]
`, []string{`:6: machine "web" is already in group 1 (line 4)`}},
		"shape": {`name: shop
groups:
  - machines:
      - name: db
        ip: [lan=192.0.2.9/24]
      - ips: [lan=192.0.2.9/24]
      - name: web
        ips: lan=192.0.2.9/24
`, []string{`:5: unknown key "ip" in a machine entry (it takes name, ips)`, `:6: a machine entry needs a name`, `:8: ips must be a list`}},
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(file, []byte(tc.yaml), 0o600))
			code, stdout, stderr := s.cli(t, "--json", "plans", "apply", "-f", file)
			require.Equal(t, exitError, code, stdout)
			e := jsonError(t, stderr)
			require.Equal(t, api.CodeInvalid, e.Code)
			for _, w := range tc.want {
				require.Contains(t, e.Message, w)
			}
			require.Equal(t, before, s.plan(t, "shop"), "a refused file changed the plan")
		})
	}
}
