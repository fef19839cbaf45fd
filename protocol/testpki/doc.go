// Package testpki makes throwaway certificate authorities and certificates
// for tests of TLS sessions: a CA, server and client certificates valid at a
// given instant, expired ones, and the matching tls.Configs. Keys are ECDSA
// P-256 so that a test makes dozens in milliseconds. Not for production:
// the controller's real PKI lives in controller/pki.
package testpki
