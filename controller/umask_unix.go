//go:build !windows

package controller

import "syscall"

func umask(m int) int { return syscall.Umask(m) }
