package relay

import (
	"encoding/binary"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// RecvNow reads one datagram from the UDP socket behind rc if one is
// waiting, without waiting for it: ok is false, and nothing was read,
// when none was. from is its sender (an IPv4-mapped address on a dual
// stack socket is unmapped). A datagram longer than p is truncated, as
// a plain read does. It fails once the socket is closed, and with the
// socket's pending error (such as ECONNREFUSED on a connected socket
// whose peer sent an ICMP port unreachable), as a read would.
//
// The system call is made without telling the scheduler (see sysRead):
// it never blocks. The socket's read deadline does not apply (the
// descriptor is used through rc.Control): a caller may set one for its
// waits (WaitReadable) between reads.
func RecvNow(rc syscall.RawConn, p []byte) (n int, from netip.AddrPort, ok bool, err error) {
	var errno syscall.Errno
	cerr := rc.Control(func(fd uintptr) {
		var rsa syscall.RawSockaddrAny
		salen := uint32(unsafe.Sizeof(rsa))
		var bp unsafe.Pointer
		if len(p) > 0 {
			bp = unsafe.Pointer(&p[0])
		}
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(bp), uintptr(len(p)),
			syscall.MSG_DONTWAIT, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&salen)))
		runtime.KeepAlive(p)
		if e != 0 {
			errno = e
			return
		}
		n = int(r)
		from = addrPortOf(&rsa)
	})
	switch {
	case cerr != nil:
		return 0, netip.AddrPort{}, false, cerr
	case errno == syscall.EAGAIN:
		return 0, netip.AddrPort{}, false, nil
	case errno != 0:
		return 0, netip.AddrPort{}, false, os.NewSyscallError("recvfrom", errno)
	}
	return n, from, true, nil
}

// addrPortOf converts a socket address filled by the kernel.
func addrPortOf(rsa *syscall.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), portOf(sa.Port))
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), portOf(sa.Port))
	}
	return netip.AddrPort{}
}

// portOf reads a port in network byte order from a sockaddr field.
func portOf(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}
