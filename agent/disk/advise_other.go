//go:build !linux

package disk

import "os"

func adviseRandom(*os.File) {}
