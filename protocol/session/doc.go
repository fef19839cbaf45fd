// Package session runs a Ferry session over one TCP connection: TLS 1.3
// with ALPN ferry/1, the banner and verdict that settle the protocol
// version, then yamux. Either side opens streams; each starts with a
// stream-kind byte, and the accepting side refuses kinds it does not know
// or that its gate (Config.AllowKind) denies with an error frame, while the
// session lives on. Keepalive pings bound how long a dead link goes
// unnoticed; when the session ends, every open stream's reads and writes
// return its error.
//
// The agent dials (Dial); the controller accepts (Server) and opens streams
// back over the same session, so agents never listen.
package session
