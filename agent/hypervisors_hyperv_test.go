package agent

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/agent/driver/hyperv"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/stretchr/testify/require"
)

// TestHypervisorTableHyperV: the hyperv row builds the Hyper-V driver and
// target.validate reaches its Validate: an unknown option and a host without
// powershell.exe are refused as invalid with the driver's reason.
func TestHypervisorTableHyperV(t *testing.T) {
	k, err := lookupKind(msg.DriverHyperV)
	require.NoError(t, err)
	d, err := k.New(map[string]string{hyperv.OptSwitch: "External LAN"})
	require.NoError(t, err)
	require.IsType(t, &hyperv.Driver{}, d)

	err = validateHypervisor(context.Background(), msg.TargetValidateRequest{Kind: msg.DriverHyperV, Options: map[string]string{"uri": "qemu:///system"}})
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.Contains(t, err.Error(), "unknown option")

	missing := filepath.Join(t.TempDir(), "powershell.exe")
	err = validateHypervisor(context.Background(), msg.TargetValidateRequest{Kind: msg.DriverHyperV, Options: map[string]string{hyperv.OptPowerShell: missing}})
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.Contains(t, err.Error(), missing)
}
