//go:build unix && !linux

package relay

import "syscall"

// sysRead and sysWrite are read(2) and write(2) on a non-blocking
// descriptor (raw system calls on Linux, see rawsys_linux.go).
func sysRead(fd int, b []byte) (int, syscall.Errno) { return errno(syscall.Read(fd, b)) }

func sysWrite(fd int, b []byte) (int, syscall.Errno) { return errno(syscall.Write(fd, b)) }

// errno is a system call wrapper's result as rawRW returns it: the
// count, or the error number (EIO for an error that is not one).
func errno(n int, err error) (int, syscall.Errno) {
	if err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return 0, e
		}
		return 0, syscall.EIO
	}
	return n, 0
}
