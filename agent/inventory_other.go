//go:build !linux

package agent

import "github.com/ferrydr/ferry/protocol/msg"

// blockDevices is not implemented on this platform yet; image files are
// still listed.
func blockDevices() []msg.InventoryItem { return nil }
