package stack

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Conn is an accepted TCP connection from the app. Read returns io.EOF after
// the app's FIN; CloseWrite sends our FIN while reading continues.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// TCPRequest is an app's connection attempt whose handshake is on hold until
// the Handler calls Accept or Reject.
type TCPRequest struct {
	s        *Stack
	fr       *tcp.ForwarderRequest // gVisor mode
	nat      *natEntry             // system TCP mode
	src, dst netip.AddrPort

	mu      sync.Mutex
	decided bool
}

// Src is the app's address and port.
func (r *TCPRequest) Src() netip.AddrPort { return r.src }

// Dst is the address and port the app connects to.
func (r *TCPRequest) Dst() netip.AddrPort { return r.dst }

func (r *TCPRequest) decide() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.decided {
		return false
	}
	r.decided = true
	return true
}

// Accept completes the app's handshake and returns the connection. It blocks
// until the app acknowledges our SYN-ACK (or gives up). A second call, or a
// call after Reject, returns an error.
func (r *TCPRequest) Accept() (Conn, error) {
	if !r.decide() {
		return nil, errAlreadyDecided
	}
	if r.nat != nil {
		return r.acceptSystem()
	}
	var wq waiter.Queue
	ep, terr := r.fr.CreateEndpoint(&wq)
	if terr != nil {
		r.fr.Complete(true)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Source: net.TCPAddrFromAddrPort(r.dst),
			Addr: net.TCPAddrFromAddrPort(r.src), Err: convertError(terr)}
	}
	r.fr.Complete(false)

	o := r.s.cfg.TCP
	if o.KeepAliveIdle > 0 {
		idle := tcpip.KeepaliveIdleOption(o.KeepAliveIdle)
		intvl := tcpip.KeepaliveIntervalOption(o.KeepAliveInterval)
		_ = ep.SetSockOpt(&idle)
		_ = ep.SetSockOpt(&intvl)
		_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, o.KeepAliveCount)
		ep.SocketOptions().SetKeepAlive(true)
	}

	c := &tcpConn{TCPConn: gonet.NewTCPConn(&wq, ep), s: r.s, ep: ep, wq: &wq}
	s := r.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ep.Abort()
		return nil, errStackClosed
	}
	s.tcpConns[c] = struct{}{}
	s.mu.Unlock()
	s.tcpOpen.Add(1)
	return c, nil
}

// Reject answers the app's SYN with a RST at once ("connection refused").
// It does nothing after Accept or a previous Reject.
func (r *TCPRequest) Reject() {
	if !r.decide() {
		return
	}
	r.s.tcpRejected.Add(1)
	if r.nat != nil {
		r.s.sys.reject(r.nat)
		return
	}
	r.fr.Complete(true)
}

// Drop discards the app's SYN without any answer (REJECT-DROP): the app
// sees a connect timeout, as if the destination did not exist.
func (r *TCPRequest) Drop() {
	if !r.decide() {
		return
	}
	r.s.tcpRejected.Add(1)
	if r.nat != nil {
		r.s.sys.remove(r.nat)
		return
	}
	r.fr.Complete(false)
}

// forwardTCP is gVisor's forwarder callback. gVisor already runs it on a new
// goroutine per SYN; the Handler runs right here so that goroutine is the
// handler's own and is tracked for Close.
func (s *Stack) forwardTCP(fr *tcp.ForwarderRequest) {
	id := fr.ID()
	s.handleRequest(&TCPRequest{
		s:   s,
		fr:  fr,
		src: netip.AddrPortFrom(addrFromTCPIP(id.RemoteAddress), id.RemotePort),
		dst: netip.AddrPortFrom(addrFromTCPIP(id.LocalAddress), id.LocalPort),
	})
}

// startSystemRequest hands a SYN the system TCP mode holds to the Handler,
// on a goroutine of its own (the packet loop must not wait).
func (s *Stack) startSystemRequest(e *natEntry, src, dst netip.AddrPort) {
	go s.handleRequest(&TCPRequest{s: s, nat: e, src: src, dst: dst})
}

// handleRequest runs the Handler for r on the calling goroutine, which it
// tracks for Close.
func (s *Stack) handleRequest(r *TCPRequest) {
	growStack()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.Reject()
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()
	s.tcpTotal.Add(1)
	s.handler.HandleTCP(s.ctx, r)
	if r.decide() {
		// The handler broke its contract; never leave the app hanging.
		s.handlerUndecided.Add(1)
		s.tcpRejected.Add(1)
		if r.nat != nil {
			s.sys.reject(r.nat)
		} else {
			r.fr.Complete(true)
		}
		s.log.Warn("TCP handler returned without Accept or Reject; sent RST", "src", r.src, "dst", r.dst)
	}
}

// tcpConn counts payload bytes and unregisters itself on Close. It can
// wait for the app's next bytes without a buffer (WaitRead).
type tcpConn struct {
	*gonet.TCPConn
	s         *Stack
	ep        tcpip.Endpoint
	wq        *waiter.Queue
	closeOnce sync.Once

	readDeadline atomic.Int64 // UnixNano, 0 for none: gonet keeps its own private copy
	waitTimer    *time.Timer  // WaitRead's, made on its first timed wait
}

// WaitRead returns once a Read would not block: the app's bytes, its FIN
// or an error are waiting, or the connection was closed. It holds no
// buffer while it waits, so a relay of an idle connection holds none
// (relay.ReadWaiter). When the read deadline passes first it returns an
// error wrapping os.ErrDeadlineExceeded, as Read would. One goroutine at a
// time may call it (the connection's reader).
func (c *tcpConn) WaitRead() error {
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		return nil
	}
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	for c.ep.Readiness(waiter.ReadableEvents) == 0 {
		var expired <-chan time.Time
		if d := c.readDeadline.Load(); d != 0 {
			left := time.Until(time.Unix(0, d))
			if left <= 0 {
				return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.ErrDeadlineExceeded}
			}
			if c.waitTimer == nil {
				c.waitTimer = time.NewTimer(left)
			} else {
				c.waitTimer.Reset(left)
			}
			expired = c.waitTimer.C
		}
		select {
		case <-notify:
		case <-expired:
		}
		if c.waitTimer != nil {
			c.waitTimer.Stop()
		}
	}
	return nil
}

// SetDeadline and SetReadDeadline also wake a WaitRead, which looks at the
// new deadline.
func (c *tcpConn) SetDeadline(t time.Time) error {
	err := c.TCPConn.SetDeadline(t)
	c.setReadDeadline(t)
	return err
}

func (c *tcpConn) SetReadDeadline(t time.Time) error {
	err := c.TCPConn.SetReadDeadline(t)
	c.setReadDeadline(t)
	return err
}

func (c *tcpConn) setReadDeadline(t time.Time) {
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	if c.readDeadline.Swap(d) != d {
		c.wq.Notify(waiter.ReadableEvents)
	}
}

func (c *tcpConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	c.s.bytesUp.Add(uint64(n))
	return n, err
}

func (c *tcpConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.s.bytesDown.Add(uint64(n))
	return n, err
}

func (c *tcpConn) Close() error {
	err := c.TCPConn.Close()
	c.closeOnce.Do(func() {
		c.s.mu.Lock()
		delete(c.s.tcpConns, c)
		c.s.mu.Unlock()
		c.s.tcpOpen.Add(-1)
	})
	if err != nil {
		return fmt.Errorf("stack: close: %w", err)
	}
	return nil
}

// SetWriteDeadline and CloseWrite are promoted from gonet.TCPConn; listed
// here so the wrapper's method set is obvious.
var _ interface {
	SetDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	CloseWrite() error
	WaitRead() error
} = (*tcpConn)(nil)

// acceptSystem completes the app's handshake in system TCP mode.
func (r *TCPRequest) acceptSystem() (Conn, error) {
	s := r.s
	tc, err := s.sys.accept(r.nat)
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Source: net.TCPAddrFromAddrPort(r.dst),
			Addr: net.TCPAddrFromAddrPort(r.src), Err: err}
	}
	c := &sysConn{TCPConn: tc, s: s, nat: r.nat}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		tc.SetLinger(0)
		tc.Close()
		s.sys.remove(r.nat)
		return nil, errStackClosed
	}
	s.sysConns[c] = struct{}{}
	s.mu.Unlock()
	s.tcpOpen.Add(1)
	return c, nil
}

// sysConn is an app connection the kernel terminated (system TCP mode). It
// counts payload bytes, and on Close lets its translation expire.
type sysConn struct {
	*net.TCPConn
	s         *Stack
	nat       *natEntry
	closeOnce sync.Once
}

func (c *sysConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	c.s.bytesUp.Add(uint64(n))
	return n, err
}

func (c *sysConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.s.bytesDown.Add(uint64(n))
	return n, err
}

// KernelConn lets the relay splice on the kernel socket (relay.KernelConner).
func (c *sysConn) KernelConn() *net.TCPConn { return c.TCPConn }

func (c *sysConn) Close() error {
	err := c.TCPConn.Close()
	c.closeOnce.Do(func() {
		c.s.mu.Lock()
		delete(c.s.sysConns, c)
		c.s.mu.Unlock()
		c.s.tcpOpen.Add(-1)
		c.s.sys.closed(c.nat)
	})
	return err
}

// growStack makes the calling goroutine's stack about 16 KiB in one step,
// while it is still nearly empty and cheap to copy. A request's goroutine
// starts with the runtime's few KiB and soon goes that deep (the dial under
// the router, gVisor's handshake under Accept); growing there, doubling by
// doubling with every frame copied each time, took about 4.5% of tunsocks'
// CPU at a high connection rate (go tool pprof of `tunsocks run
// --cpuprofile` under scripts/bench.sh). The memory is what the goroutine
// would reach anyway, and the garbage collector shrinks the stack again
// while the goroutine idles in the relay.
//
//go:noinline
func growStack() {
	var b [growStackBytes]byte
	stackSink(b[:])
}

const growStackBytes = 12 << 10

//go:noinline
func stackSink(b []byte) { _ = b[len(b)-1] }
