//go:build !unix

package relay

import "syscall"

// WaitReadable returns at once here: the caller's read blocks instead.
func WaitReadable(syscall.RawConn) error { return nil }
