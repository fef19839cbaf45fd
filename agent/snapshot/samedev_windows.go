package snapshot

import "os"

func sameDevice(a, b os.FileInfo) bool { return false }
