//go:build unix && !linux

package relay

import "syscall"

// sysRead and sysWrite are read(2) and write(2) on a non-blocking
// descriptor (raw system calls on Linux, see rawsys_linux.go).
func sysRead(fd int, b []byte) (int, syscall.Errno) { return errno(syscall.Read(fd, b)) }

func sysWrite(fd int, b []byte) (int, syscall.Errno) { return errno(syscall.Write(fd, b)) }
