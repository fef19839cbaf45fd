// Command ferry is the controller (`ferry serve`) and the admin CLI.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ferry: not built yet")
	os.Exit(1)
}
