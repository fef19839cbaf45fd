// Package admin is the controller's admin API: HTTP + JSON on a Unix socket
// (mode 0600) and optionally on TCP with TLS and a bearer token, and the Go
// client the ferry CLI uses.
package admin
