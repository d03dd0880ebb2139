//go:build unix

package wg

import "syscall"

func errAddrInUse() error { return syscall.EADDRINUSE }
