package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// Hypervisor is what a job needs from the platform that runs a machine, at
// either site: the recovery site's target or the home site's source. One
// interface serves both directions; exec, libvirt, vsphere and hyperv
// implement it. Every method is idempotent: Start of a running machine and
// Stop of a stopped one succeed, Remove of an absent one succeeds.
type Hypervisor interface {
	// Start defines (or updates) the machine from spec when needed and powers it on.
	Start(ctx context.Context, spec Spec) error
	// Stop shuts the machine down gracefully, then forcibly after spec's timeout.
	Stop(ctx context.Context, spec Spec) error
	// Pause and Resume freeze and thaw the running machine's vCPUs.
	Pause(ctx context.Context, spec Spec) error
	Resume(ctx context.Context, spec Spec) error
	// Status reports StatusRunning, StatusStopped or StatusAbsent.
	Status(ctx context.Context, spec Spec) (string, error)
	// Remove stops the machine if needed and deletes its definition (never its
	// disks): test failover cleanup, rollback.
	Remove(ctx context.Context, spec Spec) error
}

// Spec is the machine a driver acts on, from the hardware description captured
// at protect time and the job's context.
type Spec struct {
	Name     string // the hypervisor's name for it: the Ferry machine, or MACHINE-test
	Machine  string // the Ferry machine's name
	Test     bool   // a test failover or drill: bring it up isolated from production networks
	CPUs     int
	Memory   int64  // bytes
	Firmware string // "bios" or "uefi"; "" = bios
	NICs     []NIC
	Disks    []Disk
	NewMACs  bool              // generate new MAC addresses instead of keeping the source's
	Env      map[string]string // FERRY_* context (exec driver, scripts)
}

// NIC is one network interface and the network it joins at this site (after
// the target's network map has been applied).
type NIC struct {
	Name    string // the source's network name, as given to protect --nic
	Network string // the network at this site: libvirt network or bridge, vSphere port group, Hyper-V switch
	MAC     string // kept unless Spec.NewMACs
	Address string // ADDR/PREFIX to set in the guest, when re-IP applies
	Gateway string
}

// Disk is one disk file or device of the machine at this site.
type Disk struct {
	Name   string
	Path   string
	Format string // raw, qcow2, vhdx, vmdk
}

// ErrorKind classifies driver failures so the job engine retries only the
// transient ones (Error.Retryable).
type ErrorKind int

const (
	KindUnknown        ErrorKind = iota // not classified: not retried
	KindNotFound                        // the machine, datastore, network … does not exist
	KindAlreadyRunning                  // a start found the machine running (not started by this job)
	KindTimeout                         // the platform did not answer in time
	KindAuth                            // credentials refused
	KindTransient                       // a retry may succeed (connection reset, busy)
	KindInvalid                         // the request or the configuration is wrong
)

var kindNames = map[ErrorKind]string{
	KindUnknown: "unknown", KindNotFound: "not found", KindAlreadyRunning: "already running",
	KindTimeout: "timeout", KindAuth: "auth", KindTransient: "transient", KindInvalid: "invalid",
}

func (k ErrorKind) String() string { return kindNames[k] }

// Error is a classified driver failure.
type Error struct {
	Driver string // exec, libvirt, vsphere, hyperv
	Op     string // start, stop, …
	Kind   ErrorKind
	Err    error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s driver %s: %s: %v", e.Driver, e.Op, e.Kind, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether a retry can help: only for transient errors.
// A timeout is not retried: the platform did not answer within the bound
// the user set (shutdown-timeout, task-timeout, powershell-timeout), and
// waiting that long again would double the step's time; the step fails
// with the error naming the timeout.
func (e *Error) Retryable() bool { return e.Kind == KindTransient }

// KindOf returns err's classification, KindUnknown when it has none.
func KindOf(err error) ErrorKind {
	var de *Error
	if errors.As(err, &de) {
		return de.Kind
	}
	return KindUnknown
}

// Classify wraps err as a *Error of driver name and operation op, of the
// kind kindOf gives it. nil stays nil; an error already classified (a
// *Error anywhere in its chain) is returned as it is.
func Classify(name, op string, err error, kindOf func(error) ErrorKind) error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return err
	}
	return &Error{Driver: name, Op: op, Kind: kindOf(err), Err: err}
}

// ConnKind classifies the failures every driver's transport shares: the
// context (its deadline: timeout; cancelled: unknown, which is not retried)
// and the connection (a network timeout: timeout; refused, reset, broken
// pipe, EOF or any other network operation error: transient). ok is false
// when err is none of these, for the driver's own classification.
func ConnKind(err error) (kind ErrorKind, ok bool) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout, true
	case errors.Is(err, context.Canceled):
		return KindUnknown, true
	case errors.As(err, &ne) && ne.Timeout():
		return KindTimeout, true
	case errors.As(err, &oe), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return KindTransient, true
	}
	return KindUnknown, false
}
