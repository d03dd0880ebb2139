package relay

import (
	"runtime"
	"syscall"
	"unsafe"
)

// sysRead and sysWrite are read(2) and write(2) on a non-blocking
// descriptor, made without telling the scheduler (syscall.RawSyscall):
// they never block, and a system call announced to the scheduler
// (syscall.Syscall) wakes the runtime's sysmon thread whenever it had
// gone to sleep because every P was idle. A relay in a request/response
// exchange goes idle between every request and its reply, so each one
// cost a sysmon wakeup and a few short sleeps (see the tun package's
// vnetFile, which does the same for the TUN descriptor).
func sysRead(fd int, b []byte) (int, syscall.Errno) {
	return rawRW(syscall.SYS_READ, fd, b)
}

func sysWrite(fd int, b []byte) (int, syscall.Errno) {
	return rawRW(syscall.SYS_WRITE, fd, b)
}

func rawRW(trap uintptr, fd int, b []byte) (int, syscall.Errno) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := syscall.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
	runtime.KeepAlive(b)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}
