//go:build unix

package socksclient

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// WaitRead blocks until a datagram from the relay is waiting (or the socket
// has an error or is closed, which the next ReadFrom reports) without
// reading it, so a caller can take a buffer only once there is a datagram
// to put in it. It returns an error once the association is closed.
func (u *UDPConn) WaitRead() error {
	sc, ok := u.pc.(syscall.Conn)
	if !ok {
		return nil // ReadFrom blocks instead
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return u.ioError("read", u.relay, err)
	}
	var one [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// A peek without waiting: the runtime's poller waits for the
		// socket to become readable when nothing is there yet.
		_, _, perr := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(perr, unix.EAGAIN)
	})
	if err != nil {
		return u.ioError("read", u.relay, err)
	}
	return nil
}

// readNonblock reads what a non-blocking socket holds.
func readNonblock(fd uintptr, b []byte) (int, error) { return unix.Read(int(fd), b) }

func isWouldBlock(err error) bool { return errors.Is(err, unix.EAGAIN) }
