package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
)

// Identity is who makes an admin call and through which front end. The
// front end that authenticated the caller sets it on the request context
// (WithIdentity); the audit trail records it.
type Identity struct {
	Who string // "uid:1000", "token:sha256:1a2b3c4d5e6f", ...
	Via string // "socket", "tls", "console"
}

type identityKey struct{}

// WithIdentity returns ctx carrying id. The console sets its session's
// token identity this way before it hands a request to Server.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity a front end set, if any.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// TokenIdentity names a bearer token without revealing it: a prefix of
// its SHA-256, enough to tell tokens apart, useless to present.
func TokenIdentity(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "token:sha256:" + hex.EncodeToString(sum[:6])
}

// SocketConnContext is an http.Server ConnContext for the admin Unix
// socket: it records the connecting process's uid (SO_PEERCRED) as the
// identity of every request on the connection.
func SocketConnContext(ctx context.Context, c net.Conn) context.Context {
	who := "uid:unknown"
	if uid, ok := peerUID(c); ok {
		who = "uid:" + uid
	}
	return WithIdentity(ctx, Identity{Who: who, Via: "socket"})
}
