//go:build unix

package relay

import (
	"errors"
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
			putBuf(*bp)
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

// errAgain is kernelWriter's error when the socket's send buffer is full.
var errAgain = errors.New("relay: socket send buffer full")

// kernelWriter writes to a kernel TCP socket's descriptor from inside
// rc.Write's callback, without waiting: when the send buffer is full it
// reports what it wrote and errAgain, and the caller waits for the socket
// to be writable. It keeps the errno of a failed write (EAGAIN when the
// buffer was full): a DirectReader need not pass w's error on. Small (it
// lives in every idle relay, see notifiedHalf).
type kernelWriter struct {
	fd    int32
	errno int32
}

func (w *kernelWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		var m int
		var e syscall.Errno
		if len(p)-n <= rawWriteMax {
			m, e = sysWrite(int(w.fd), p[n:])
		} else {
			// Bulk: told to the scheduler, as (*net.TCPConn).Write
			// is (see forward).
			m, e = errno(syscall.Write(int(w.fd), p[n:]))
		}
		switch e {
		case 0:
			n += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			w.errno = int32(e)
			return n, errAgain
		default:
			w.errno = int32(e)
			return n, e
		}
	}
	return n, nil
}

// readToKernel moves what src has to read now straight into the kernel
// TCP socket k, from src's own buffers (one copy fewer than a Read into a
// buffer of ours and a Write from it), waiting only while k's send buffer
// is full: src keeps what k did not take. It returns the bytes moved, and
// io.EOF at src's end, src's error, or k's write error (an *net.OpError).
// 0, nil: src had nothing to read.
func readToKernel(src DirectReader, k *kernelConn, w *kernelWriter) (int, error) {
	total := 0
	var rerr error
	err := k.rc.Write(func(fd uintptr) bool {
		*w = kernelWriter{fd: int32(fd)}
		n, e := src.ReadTo(w)
		total += n
		if w.errno == int32(syscall.EAGAIN) {
			w.errno = 0
			return false // wait until k is writable, then read on
		}
		rerr = e
		return true
	})
	switch {
	case err != nil:
		// Closed, or the write deadline passed.
		return total, &net.OpError{Op: "write", Net: "tcp", Source: k.tc.LocalAddr(), Addr: k.tc.RemoteAddr(), Err: err}
	case w.errno != 0:
		return total, &net.OpError{Op: "write", Net: "tcp", Source: k.tc.LocalAddr(), Addr: k.tc.RemoteAddr(), Err: os.NewSyscallError("write", syscall.Errno(w.errno))}
	}
	return total, rerr
}

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
