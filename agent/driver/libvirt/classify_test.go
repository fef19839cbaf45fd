package libvirt

import (
	"context"
	"fmt"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
)

// TestClassify maps libvirt's error numbers (as go-libvirt returns them from
// the RPC) and connection failures to driver error kinds; only transient and
// timeout are retryable.
func TestClassify(t *testing.T) {
	for code, want := range map[golibvirt.ErrorNumber]driver.ErrorKind{
		golibvirt.ErrNoDomain:         driver.KindNotFound,
		golibvirt.ErrNoNetwork:        driver.KindNotFound,
		golibvirt.ErrAuthFailed:       driver.KindAuth,
		golibvirt.ErrAccessDenied:     driver.KindAuth,
		golibvirt.ErrOperationTimeout: driver.KindTimeout,
		golibvirt.ErrRPC:              driver.KindTransient,
		golibvirt.ErrNoConnect:        driver.KindTransient,
		golibvirt.ErrXMLError:         driver.KindInvalid,
		golibvirt.ErrOperationFailed:  driver.KindUnknown,
	} {
		err := classify("start", fmt.Errorf("wrapped: %w", golibvirt.Error{Code: uint32(code), Message: code.String()}))
		require.Equal(t, want, driver.KindOf(err), "%s", code)
		var de *driver.Error
		require.ErrorAs(t, err, &de)
		require.Equal(t, want == driver.KindTransient, de.Retryable(), "%s: only transient errors are retried", code)
	}
	require.Equal(t, driver.KindTimeout, driver.KindOf(classify("stop", context.DeadlineExceeded)))
	require.Nil(t, classify("stop", nil))
	inner := &driver.Error{Driver: Name, Op: "x", Kind: driver.KindInvalid}
	require.Same(t, inner, classify("start", inner).(*driver.Error), "an already classified error is kept")
}
