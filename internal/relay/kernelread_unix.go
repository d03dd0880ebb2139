//go:build unix

package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// canReadKernel says kernelReader works here.
const canReadKernel = true

// kernelReader reads a kernel TCP socket through the runtime poller: the
// buffer is taken only when the socket has something to read, and put back
// while the poller waits, at no extra system call (a read that would block
// is the wait's first step anyway). Errors and the end of the stream come
// back as from (*net.TCPConn).Read. Its callback for the RawConn is made
// once: a closure made for each read escapes through the RawConn and cost
// three allocations a read (it and the two results it sets), a read per
// round trip of a request/response exchange. One goroutine at a time may
// call read.
type kernelReader struct {
	tc  *net.TCPConn
	rc  syscall.RawConn
	get func(**[]byte)
	fn  func(uintptr) bool // r.call, made once
	// The read under way's buffer and results.
	bp    **[]byte
	n     int
	errno syscall.Errno
	// sink, when set, takes the bytes of a read shorter than its buffer
	// and no longer than sinkMax (the socket drained) inside the same wait: it
	// consumes (**bp)[:n] and puts *bp back, and read then waits for the
	// socket's next readiness at once, instead of returning for the
	// caller's next read, whose first system call would find nothing
	// (the runtime forgets readiness seen before each new wait, so only
	// a read inside the same wait may skip that call). A sink error ends
	// read with it. serr is that error.
	sink func(n int) error
	serr error
	// empty counts the reads that found nothing (tests).
	empty uint64
}

func newKernelReader(tc *net.TCPConn, rc syscall.RawConn, get func(**[]byte)) *kernelReader {
	r := &kernelReader{tc: tc, rc: rc, get: get}
	r.fn = r.call
	return r
}

func (r *kernelReader) call(fd uintptr) bool {
	r.get(r.bp)
	var e syscall.Errno
	for {
		r.n, e = sysRead(int(fd), **r.bp)
		if e != syscall.EINTR {
			break
		}
	}
	r.errno = e
	if e == syscall.EAGAIN {
		r.empty++
		putBuf(*r.bp)
		*r.bp = nil
		return false
	}
	if e == 0 && r.sink != nil && r.n > 0 && r.n <= sinkMax && r.n < len(**r.bp) {
		if err := r.sink(r.n); err != nil {
			r.n, r.serr = 0, err
			return true
		}
		return false
	}
	return true
}

// read reads into *bp, which it takes with get once bytes are there.
func (r *kernelReader) read(bp **[]byte) (int, error) {
	r.bp, r.n, r.errno, r.serr = bp, 0, 0, nil
	err := r.rc.Read(r.fn)
	n, e, serr := r.n, r.errno, r.serr
	r.bp, r.serr = nil, nil
	switch {
	case err != nil:
		// Closed, or the read deadline passed (os.ErrDeadlineExceeded).
		return 0, err
	case serr != nil:
		return 0, serr
	case e != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.tc.LocalAddr(), Addr: r.tc.RemoteAddr(), Err: os.NewSyscallError("read", e)}
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

// sinkMax is the longest read kernelReader hands its sink: a reply of a
// request/response exchange. A longer short read is likely a bulk
// transfer's, whose next bytes arrive while the last are forwarded: the
// caller reads them at once, as a wait would only look for them at the
// runtime's next poll (1-stream download 0.92x CPU per MB with every
// short read sunk, in a same-run A/B).
const sinkMax = 4 << 10

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
//
// Its writes are raw system calls (sysWrite) whatever their size: a bulk
// upload's 64 KiB segment sends through the veth or loopback in the
// write, tens of microseconds, and a write announced to the scheduler
// that long had its P taken by sysmon and handed to another thread,
// which woke, and the writer's thread, back from the kernel without a
// P, went to sleep: thread wakeups per segment (with the reader's whole
// segments held, see the stack's maxWholeHeld, the TUN program's CPU
// time per MB of a single-stream upload fell by about a fifth in A/B
// runs). The write never blocks (the descriptor is non-blocking): the
// thread is busy in the kernel, not waiting.
type kernelWriter struct {
	fd    int32
	errno int32
}

func (w *kernelWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, e := sysWrite(int(w.fd), p[n:])
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
	c := directCalls.Get().(*directCall)
	c.src, c.w, c.total, c.rerr = src, w, 0, nil
	err := k.rc.Write(c.fn)
	total, rerr := c.total, c.rerr
	c.src, c.w, c.rerr = nil, nil, nil
	directCalls.Put(c)
	switch {
	case err != nil:
		// Closed, or the write deadline passed.
		return total, &net.OpError{Op: "write", Net: "tcp", Source: k.tc.LocalAddr(), Addr: k.tc.RemoteAddr(), Err: err}
	case w.errno != 0:
		return total, &net.OpError{Op: "write", Net: "tcp", Source: k.tc.LocalAddr(), Addr: k.tc.RemoteAddr(), Err: os.NewSyscallError("write", syscall.Errno(w.errno))}
	}
	return total, rerr
}

// directCall is one readToKernel call's state, with its callback for the
// RawConn made once: a closure made for each call escapes through the
// RawConn and cost three allocations a call (it and the two results it
// sets), one or two calls per request of a request/response exchange.
// Pooled, not kept in the direction: an idle relay holds none.
type directCall struct {
	fn    func(uintptr) bool // c.call
	src   DirectReader
	w     *kernelWriter
	total int
	rerr  error
}

var directCalls = sync.Pool{New: func() any {
	c := new(directCall)
	c.fn = c.call
	return c
}}

// call moves src's bytes into fd until src has no more or fd's send
// buffer is full (then false: wait until fd is writable, and read on).
func (c *directCall) call(fd uintptr) bool {
	w := c.w
	*w = kernelWriter{fd: int32(fd)}
	n, e := c.src.ReadTo(w)
	c.total += n
	if w.errno == int32(syscall.EAGAIN) {
		w.errno = 0
		return false
	}
	c.rerr = e
	return true
}
