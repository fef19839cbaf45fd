// Package archcheck holds the test that enforces Ferry's import rules
// (STYLE.md "A layout to grow into") with `go list -deps`.
package archcheck
