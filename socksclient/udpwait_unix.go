//go:build unix

package socksclient

import (
	"errors"

	"golang.org/x/sys/unix"
)

// readNonblock reads what a non-blocking socket holds.
func readNonblock(fd uintptr, b []byte) (int, error) { return unix.Read(int(fd), b) }

func isWouldBlock(err error) bool { return errors.Is(err, unix.EAGAIN) }
