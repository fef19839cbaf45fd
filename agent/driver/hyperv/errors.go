package hyperv

import (
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/agent/driver"
)

// driverName is this driver's name in driver.Error.
const driverName = "hyperv"

// ErrScript is a script that failed without a readable error record (no
// result line, bad JSON, killed).
var ErrScript = errors.New("powershell script failed")

// PSError is a PowerShell error record as the epilogue reports it. Every
// field is a documented property of System.Management.Automation.ErrorRecord
// or System.Exception:
//   - Category: ErrorRecord.CategoryInfo.Category, an ErrorCategory name
//     https://learn.microsoft.com/en-us/dotnet/api/system.management.automation.errorcategory
//   - ID: ErrorRecord.FullyQualifiedErrorId
//     https://learn.microsoft.com/en-us/dotnet/api/system.management.automation.errorrecord.fullyqualifiederrorid
//   - HResult: Exception.HResult
//     https://learn.microsoft.com/en-us/dotnet/api/system.exception.hresult
//   - Type: the exception's Type.FullName
//     https://learn.microsoft.com/en-us/dotnet/api/system.type.fullname
//   - Message: Exception.Message
//     https://learn.microsoft.com/en-us/dotnet/api/system.exception.message
type PSError struct {
	Category string `json:"category"`
	ID       string `json:"id"`
	HResult  int32  `json:"hresult"`
	Type     string `json:"type"`
	Message  string `json:"message"`
}

func (e *PSError) Error() string {
	return fmt.Sprintf("%s (%s, %s)", e.Message, e.Category, e.ID)
}

// HRESULTs the classification knows (winerror.h values, as the signed 32-bit
// numbers Exception.HResult holds).
const (
	hrAccessDenied      = -2147024891 // 0x80070005 E_ACCESSDENIED
	hrTimeout           = -2147023436 // 0x800705B4 HRESULT_FROM_WIN32(ERROR_TIMEOUT)
	hrRPCUnavailable    = -2147023174 // 0x800706BA RPC_S_SERVER_UNAVAILABLE
	hrRPCCallRejected   = -2147418111 // 0x80010001 RPC_E_CALL_REJECTED
	hrRPCRetryLater     = -2147417846 // 0x8001010A RPC_E_SERVERCALL_RETRYLATER
	hrWBEMCallCancelled = -2147217358 // 0x80041032 WBEM_E_CALL_CANCELLED
)

// kind classifies an error record: first by HRESULT, then by its
// ErrorCategory (the documented enum's member names:
// https://learn.microsoft.com/en-us/dotnet/api/system.management.automation.errorcategory).
func (e *PSError) kind() driver.ErrorKind {
	switch e.HResult {
	case hrAccessDenied:
		return driver.KindAuth
	case hrTimeout:
		return driver.KindTimeout
	case hrRPCUnavailable, hrRPCCallRejected, hrRPCRetryLater, hrWBEMCallCancelled:
		return driver.KindTransient
	}
	switch e.Type {
	case "System.UnauthorizedAccessException":
		return driver.KindAuth
	case "System.TimeoutException":
		return driver.KindTimeout
	}
	switch e.Category {
	case "ObjectNotFound":
		return driver.KindNotFound
	case "PermissionDenied", "SecurityError", "AuthenticationError":
		return driver.KindAuth
	case "OperationTimeout":
		return driver.KindTimeout
	case "ResourceBusy", "ResourceUnavailable", "ConnectionError":
		return driver.KindTransient
	case "InvalidArgument", "InvalidData", "InvalidType", "SyntaxError", "LimitsExceeded":
		return driver.KindInvalid
	}
	return driver.KindUnknown
}

func classified(op string, kind driver.ErrorKind, err error) error {
	return &driver.Error{Driver: driverName, Op: op, Kind: kind, Err: err}
}

func invalid(op, format string, args ...any) error {
	return classified(op, driver.KindInvalid, fmt.Errorf(format, args...))
}
