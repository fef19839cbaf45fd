package vsphere

import (
	"errors"
	"net"
	"net/url"

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
func classify(op string, err error) error { return driver.Classify(driverName, op, err, kindOf) }

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
	case fault.Is(err, &types.Timedout{}):
		return driver.KindTimeout
	case fault.IsTransientError(err):
		return driver.KindTransient
	}
	if k, ok := driver.ConnKind(err); ok {
		return k
	}
	if errors.As(err, &ne) || errors.As(err, &ue) {
		return driver.KindTransient // any other failure to reach vCenter
	}
	return driver.KindUnknown
}
