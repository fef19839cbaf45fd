//go:build !linux

package admin

import "net"

// peerUID is unknown where SO_PEERCRED does not exist.
func peerUID(net.Conn) (string, bool) { return "", false }
