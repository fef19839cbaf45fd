// Package controller is `ferry serve`: Server.Run opens the catalog, the
// repository and the CA, accepts agents on the agent port (ALPN ferry/1 for
// sessions, http/1.1 for install endpoints), ingests what they send, keeps
// recovery points and retention, and serves the admin API.
package controller
