// Package scripts embeds the install scripts a controller serves at
// /install.sh and /install.ps1, so the controller binary carries them. It
// imports nothing of ours; cmd/ferry hands Files to the controller. The
// shell scripts beside it (dist.sh, fuzz.sh, test-deps.sh, bench-*.sh) are
// run by the Makefile, not embedded.
package scripts
