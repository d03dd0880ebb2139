//go:build unix

package relay

import (
	"io"
	"net"
	"os"
	"syscall"
)

// canReadKernel says readKernel works here.
const canReadKernel = true

// readKernel reads a kernel TCP socket through the runtime poller: the
// buffer is taken only when the socket has something to read, and put back
// while the poller waits, at no extra system call (a read that would block
// is the wait's first step anyway). Errors and the end of the stream come
// back as from (*net.TCPConn).Read.
func readKernel(tc *net.TCPConn, rc syscall.RawConn, bp **[]byte, get func(**[]byte)) (int, error) {
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		get(bp)
		var e syscall.Errno
		for {
			n, e = sysRead(int(fd), **bp)
			if e != syscall.EINTR {
				break
			}
		}
		rerr = nil
		if e != 0 {
			rerr = e
		}
		if e == syscall.EAGAIN {
			bufPool.Put(*bp)
			*bp = nil
			return false
		}
		return true
	})
	switch {
	case err != nil:
		// Closed, or the read deadline passed (os.ErrDeadlineExceeded).
		return 0, err
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// writeKernel writes all of b to a kernel TCP socket through the runtime
// poller, as (*net.TCPConn).Write does, but with sysWrite: it waits only
// while the socket's send buffer is full.
func writeKernel(tc *net.TCPConn, rc syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := sysWrite(int(fd), b[n:])
			switch e {
			case 0:
				n += m
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				werr = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		// Closed, or the write deadline passed.
		return n, &net.OpError{Op: "write", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: err}
	case werr != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
	}
	return n, nil
}

// rawWriteMax is the largest write forward makes with writeKernel.
const rawWriteMax = 4 << 10
