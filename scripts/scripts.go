package scripts

import (
	"embed"
	"io/fs"
)

//go:embed install.sh install.ps1
var files embed.FS

// Names of the embedded scripts.
const (
	InstallSh  = "install.sh"
	InstallPS1 = "install.ps1"
)

// Files returns the embedded scripts (read-only).
func Files() fs.FS { return files }
