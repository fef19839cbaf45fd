// Package pki is the controller's certificate authority: it creates the CA
// and the server certificate on first start, mints and checks enrolment
// tokens, and issues, renews and revokes agent client certificates.
package pki
