package wg

import (
	"net"

	"golang.org/x/sys/unix"
)

// forceBuffers sets the socket buffers beyond net.core.rmem_max/wmem_max,
// which only a process with CAP_NET_ADMIN may; without it nothing changes.
func forceBuffers(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
	})
}
