//go:build unix

package relay

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// WaitReadable blocks on the runtime's poller until a datagram waits on
// the socket behind rc (or it has an error, or its peer ended), without
// reading it, so a caller can take a buffer only once there is something
// to put in it. A non-blocking peek decides, so a datagram that arrived
// before the call is not missed. It fails once the socket is closed (an
// error wrapping net.ErrClosed) or its read deadline passes.
func WaitReadable(rc syscall.RawConn) error {
	var one [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(err, unix.EAGAIN)
	})
}
