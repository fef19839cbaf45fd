package protocol

import (
	"errors"
	"fmt"
)

// VersionMin and VersionMax bound the protocol versions this build speaks.
// Raise VersionMax when a new version is added; raise VersionMin only when
// support for old peers is dropped (docs/protocol.md, "Changes").
const (
	VersionMin uint16 = 1
	VersionMax uint16 = 3
)

// VersionRestoreS2 is the first version whose agents decode S2 blocks
// (codec 2) on restore streams; to older ones a controller sends stored
// S2 chunks decoded (docs/protocol.md §6.3).
const VersionRestoreS2 uint16 = 3

// AgentVersionMin is the oldest version an agent of this build speaks:
// agents are upgraded after their controller, so an agent newer than its
// controller is refused at the handshake with a clear error rather than
// running without what it relies on (docs/protocol.md, "Changes", v3).
// The controller keeps speaking every version from VersionMin, so agents
// of older builds keep replicating to it during an upgrade.
const AgentVersionMin uint16 = 3

// AgentVersions is the range an agent of this build offers.
func AgentVersions() VersionRange { return VersionRange{Min: AgentVersionMin, Max: VersionMax} }

// OlderPeerHint explains a refused handshake in which the peer speaks only
// versions older than this side's range ("" for any other error).
func OlderPeerHint(err error, peerName string) string {
	var vm *VersionMismatchError
	if errors.As(err, &vm) && vm.Peer.Valid() && vm.Peer.Max < vm.Local.Min {
		return fmt.Sprintf("the %s is of an older release than this build: upgrade it first (it keeps serving agents of older builds meanwhile)", peerName)
	}
	return ""
}

// ALPN is the TLS application protocol of agent sessions. The same port
// serves HTTPS under ALPNHTTP.
const (
	ALPN     = "ferry/1"
	ALPNHTTP = "http/1.1"
)

// VersionRange is an inclusive range of protocol versions.
type VersionRange struct {
	Min, Max uint16
}

// Supported is the range this build speaks.
func Supported() VersionRange { return VersionRange{Min: VersionMin, Max: VersionMax} }

// Valid reports whether r is a usable range: 1 ≤ Min ≤ Max.
func (r VersionRange) Valid() bool { return r.Min >= 1 && r.Min <= r.Max }

// String renders the range as "min–max" (an en dash, as in messages).
func (r VersionRange) String() string { return fmt.Sprintf("%d–%d", r.Min, r.Max) }

// Negotiate picks the version two peers use: the highest version both
// speak. Ranges that do not overlap give a *VersionMismatchError naming
// both; localName and peerName label them ("controller", "agent").
func Negotiate(local, peer VersionRange, localName, peerName string) (uint16, error) {
	if !local.Valid() || !peer.Valid() || local.Min > peer.Max || peer.Min > local.Max {
		return 0, &VersionMismatchError{Local: local, Peer: peer, LocalName: localName, PeerName: peerName}
	}
	return min(local.Max, peer.Max), nil
}

// VersionMismatchError says that two peers share no protocol version. It
// wraps ErrVersionMismatch.
type VersionMismatchError struct {
	Local, Peer         VersionRange
	LocalName, PeerName string
	// PeerMessage is what the peer said about the mismatch, when it said
	// something before closing (its own wording, for logs).
	PeerMessage string
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("ferry: protocol version mismatch: %s speaks %s, %s speaks %s",
		orPeer(e.LocalName, "this side"), e.Local, orPeer(e.PeerName, "peer"), e.Peer)
}

// Unwrap makes errors.Is(err, ErrVersionMismatch) hold.
func (e *VersionMismatchError) Unwrap() error { return ErrVersionMismatch }

// Retryable is false: retrying cannot help until one side is upgraded.
func (e *VersionMismatchError) Retryable() bool { return false }

func orPeer(name, fallback string) string {
	if name == "" {
		return fallback
	}
	return name
}
