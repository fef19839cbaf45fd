//go:build !linux

package apply

// runsOn is not known here: no disk is found to be the agent's own.
func runsOn(string, []string) (string, error) { return "", nil }
