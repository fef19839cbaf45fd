// Package console is the controller's web console: server-rendered pages
// of the estate (machines, points, jobs, targets, agents) and the failover
// actions, served on the admin TLS listener under /ui/ behind a login with
// the admin token. Templates, CSS and a little JavaScript are embedded, so
// the console needs no network at run time and no build chain.
//
// Security model (docs/console.md): the token is posted once to the login
// form and never appears in a URL; the session cookie is HttpOnly, Secure
// and SameSite=Strict and expires; every POST must carry the session's
// CSRF token and come from the console's own Origin. Actions go through
// the admin API's own handler, so they are validated (and recorded) exactly
// as the CLI's are.
package console
