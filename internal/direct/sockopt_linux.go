package direct

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

func setSockopts(c syscall.RawConn, mark uint32, iface string) error {
	var opErr error
	err := c.Control(func(fd uintptr) {
		if mark != 0 {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); e != nil {
				opErr = fmt.Errorf("direct: SO_MARK %d: %w (needs CAP_NET_ADMIN)", mark, e)
				return
			}
		}
		if iface != "" {
			if e := unix.BindToDevice(int(fd), iface); e != nil {
				opErr = fmt.Errorf("direct: SO_BINDTODEVICE %q: %w", iface, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return opErr
}
