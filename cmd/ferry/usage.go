package main

import "strings"

// isCobraUsage recognises cobra's own usage errors (unknown command or
// flag), which it returns as plain errors. Cobra offers no typed error for
// them, so its fixed message prefixes are the only signal.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "invalid argument", "flag needs an argument", "if any flags in the group"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
