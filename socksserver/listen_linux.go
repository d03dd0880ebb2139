package socksserver

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpListenConfig sets the keep-alive on the listening socket, which Linux
// copies to every socket it accepts (and starts the keep-alive timer of
// each, net/ipv4/tcp_minisocks.c tcp_create_openreq_child), so Go's
// accept is told not to set it again (KeepAlive -1).
func tcpListenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAlive: -1, Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []struct {
				level, opt, v int
				name          string
			}{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
				{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(listenKeepAliveIdle.Seconds()), "TCP_KEEPIDLE"},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(listenKeepAliveInterval.Seconds()), "TCP_KEEPINTVL"},
				{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, listenKeepAliveCount, "TCP_KEEPCNT"},
			} {
				if e := unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); e != nil {
					serr = fmt.Errorf("socksserver: listen: %s: %w", o.name, e)
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
}
