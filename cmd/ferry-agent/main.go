// Command ferry-agent runs on protected and recovery-site hosts.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ferry-agent: not built yet")
	os.Exit(1)
}
