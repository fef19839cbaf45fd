package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/vsphere"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestDriverWireError: classified driver errors cross the wire with a code
// whose Retryable (what controller/jobs retries on) is true exactly for
// transient: a timeout is failed_precondition, not retried.
func TestDriverWireError(t *testing.T) {
	for kind, code := range map[driver.ErrorKind]protocol.Code{
		driver.KindTransient:      protocol.CodeUnavailable,
		driver.KindTimeout:        protocol.CodeFailedPrecondition,
		driver.KindNotFound:       protocol.CodeNotFound,
		driver.KindAuth:           protocol.CodeUnauthorized,
		driver.KindInvalid:        protocol.CodeInvalid,
		driver.KindAlreadyRunning: protocol.CodeConflict,
		driver.KindUnknown:        protocol.CodeFailedPrecondition,
	} {
		de := &driver.Error{Driver: "libvirt", Op: "start", Kind: kind, Err: errors.New("boom")}
		var pe *protocol.Error
		require.ErrorAs(t, driverWireError(de), &pe)
		require.Equal(t, code, pe.Code, "%s", kind)
		require.Equal(t, de.Retryable(), pe.Retryable(), "%s", kind)
		require.Contains(t, pe.Message, "boom")
	}
}

// TestHypervisorTable: every kind has a row; a placeholder row refuses with
// ErrDriverNotBuilt, sent as invalid; an unknown kind, a request without a
// spec and exec options are invalid.
func TestHypervisorTable(t *testing.T) {
	kinds := hypervisorKinds()
	for _, k := range []string{msg.DriverExec, msg.DriverLibvirt, msg.DriverVSphere, msg.DriverHyperV} {
		require.Contains(t, kinds, k)
	}
	// The placeholder rows (vsphere, hyperv until their packages are in).
	nb := notBuilt("vsphere")
	_, err := nb.New(nil)
	require.ErrorIs(t, err, ErrDriverNotBuilt)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err))
	require.ErrorIs(t, driverWireError(err), protocol.ErrInvalid)
	require.ErrorIs(t, nb.Validate(context.Background(), nil), ErrDriverNotBuilt)
	err = validateHypervisor(context.Background(), msg.TargetValidateRequest{Kind: "qemu"})
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = runHypervisor(context.Background(), msg.Hypervisor{Kind: msg.DriverLibvirt}, driver.ActionStart, nil)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.ErrorIs(t, validateHypervisor(context.Background(), msg.TargetValidateRequest{Kind: msg.DriverExec, Options: map[string]string{"uri": "x"}}), protocol.ErrInvalid)
}

// TestVSphereRow: the vsphere row builds agent/driver/vsphere (its option
// errors, not ErrDriverNotBuilt), and target.validate refuses its bad
// options as invalid.
func TestVSphereRow(t *testing.T) {
	k := hypervisorKinds()[msg.DriverVSphere]
	_, err := k.New(map[string]string{"url": "https://vc.example/sdk"})
	require.ErrorIs(t, err, vsphere.ErrOption)
	require.NotErrorIs(t, err, ErrDriverNotBuilt)
	require.ErrorIs(t, k.Validate(context.Background(), map[string]string{"url": "https://vc.example/sdk"}), vsphere.ErrOption)
	err = validateHypervisor(context.Background(), msg.TargetValidateRequest{Kind: msg.DriverVSphere,
		Options: map[string]string{"url": "https://vc.example/sdk"}, Networks: []string{"VM Network"}})
	require.ErrorIs(t, err, protocol.ErrInvalid)
}

// TestHomeHypervisor: a request marked Home (the machine's source driver,
// whether it comes as driver.run or as a revert's target.driver) gets the
// driver's home form, which refuses remove before reaching the hypervisor;
// the same request without Home is a target's, which tries to (and here
// cannot: no libvirtd listens on the socket).
func TestHomeHypervisor(t *testing.T) {
	ctx := context.Background()
	h := msg.Hypervisor{Kind: msg.DriverLibvirt, Options: map[string]string{"uri": "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none.sock")},
		Spec: &msg.MachineSpec{Name: "home-db", Machine: "db"}, Home: true}
	for name, run := range map[string]func() error{
		"target.driver": func() error { _, err := runHypervisor(ctx, h, msg.ActionRemove, nil); return err },
		"driver.run": func() error {
			h := h
			h.Home = false
			_, err := runHomeHypervisor(ctx, h, msg.ActionRemove, nil)
			return err
		},
	} {
		err := run()
		var pe *protocol.Error
		require.ErrorAs(t, err, &pe, name)
		require.Equal(t, protocol.CodeInvalid, pe.Code, "%s: %v", name, err)
		require.Contains(t, pe.Message, "never removed by Ferry", name)
	}
	h.Home = false
	_, err := runHypervisor(ctx, h, msg.ActionRemove, nil)
	var pe *protocol.Error
	require.ErrorAs(t, err, &pe)
	require.Equal(t, protocol.CodeUnavailable, pe.Code, "a target's remove connects: %v", err)
}
