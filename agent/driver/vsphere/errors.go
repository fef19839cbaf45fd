package vsphere

import (
	"context"
	"errors"
	"net"
	"net/url"
	"syscall"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// driverName is the driver's name in classified errors.
const driverName = "vsphere"

// Sentinels for refusals the driver makes itself.
var (
	ErrNotNFS      = errors.New("datastore is not NFS")
	ErrNotFound    = errors.New("not found")
	ErrNotUnder    = errors.New("disk is not on the datastore's mount")
	ErrTestNetwork = errors.New("test machine would join a production network")
)

// classify wraps err as a driver.Error with its kind.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *driver.Error
	if errors.As(err, &de) {
		return err
	}
	return &driver.Error{Driver: driverName, Op: op, Kind: kindOf(err), Err: err}
}

func kindOf(err error) driver.ErrorKind {
	var nf *find.NotFoundError
	var dnf *find.DefaultNotFoundError
	var ue *url.Error
	var ne net.Error
	switch {
	case fault.Is(err, &types.InvalidLogin{}), fault.Is(err, &types.NoPermission{}), fault.Is(err, &types.NotAuthenticated{}):
		return driver.KindAuth
	case soap.IsCertificateUntrusted(err):
		return driver.KindInvalid // vCenter's certificate: ca-file, or insecure; retrying cannot help
	case errors.Is(err, ErrOption), errors.Is(err, ErrDisk), errors.Is(err, ErrNotNFS),
		errors.Is(err, ErrNotUnder), errors.Is(err, ErrTestNetwork):
		return driver.KindInvalid
	case errors.Is(err, ErrNotFound), errors.As(err, &nf), errors.As(err, &dnf),
		fault.Is(err, &types.ManagedObjectNotFound{}), fault.Is(err, &types.NotFound{}), fault.Is(err, &types.FileNotFound{}):
		return driver.KindNotFound
	case errors.Is(err, context.DeadlineExceeded), fault.Is(err, &types.Timedout{}):
		return driver.KindTimeout
	case fault.IsTransientError(err), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.As(err, &ne), errors.As(err, &ue):
		return driver.KindTransient
	}
	return driver.KindUnknown
}
