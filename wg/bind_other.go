//go:build !linux

package wg

import "net"

// forceBuffers: only Linux lets a privileged process exceed the maximum.
func forceBuffers(*net.UDPConn) {}
