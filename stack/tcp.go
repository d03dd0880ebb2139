package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/tunsocks/tunsocks/internal/growstack"
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
	cancel   context.CancelCauseFunc // the Handler's context

	// The handshake table's links (Stack.hs.mu).
	hsPrev, hsNext *TCPRequest
	inTable        bool

	// detached is set by Detach: handleRequest leaves the handler's
	// tracking to the function Detach returned.
	detached bool
	conn     *tcpConn // what Accept returned

	mu       sync.Mutex
	state    reqState
	shed     bool          // shed while the Handler was deciding
	abortWhy error         // why an accepting handshake was aborted
	wq       *waiter.Queue // gVisor: the pending handshake's queue
	abort    chan struct{} // system TCP: closed to abort the handshake
}

type reqState uint8

const (
	reqDeciding  reqState = iota // the Handler has not called Accept or Reject
	reqAccepting                 // Accept waits for the app's handshake
	reqDone
)

// Src is the app's address and port.
func (r *TCPRequest) Src() netip.AddrPort { return r.src }

// Dst is the address and port the app connects to.
func (r *TCPRequest) Dst() netip.AddrPort { return r.dst }

// decide moves a deciding request to next; false if it was decided already.
func (r *TCPRequest) decide(next reqState) (ok, shed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != reqDeciding {
		return false, r.shed
	}
	r.state = next
	return true, false
}

// Accept completes the app's handshake and returns the connection. It blocks
// until the app acknowledges our SYN-ACK, for at most
// TCPOptions.HandshakeTimeout, and fails when the attempt is shed to make
// room for newer ones (TCPOptions.MaxInFlight). A second call, a call after
// Reject, or after the attempt was shed, returns an error.
func (r *TCPRequest) Accept() (Conn, error) {
	ok, shed := r.decide(reqAccepting)
	if !ok {
		if shed {
			return nil, r.opError(errShed)
		}
		return nil, errAlreadyDecided
	}
	defer r.s.hs.remove(r)
	timer := time.AfterFunc(r.s.cfg.TCP.HandshakeTimeout, func() { r.abortHandshake(errHandshakeTimeout) })
	if r.s.isClosed() {
		// A Handler that accepts once Close has cancelled it: Close
		// aborted the attempts it found accepting, and this one came
		// after; without the abort its handshake would wait for the
		// timeout, past Close's wait for handlers.
		r.abortHandshake(errStackClosed)
	}
	var c *tcpConn
	var err error
	if r.nat != nil {
		c, err = r.acceptSystem()
	} else {
		c, err = r.acceptGVisor()
	}
	timer.Stop()
	r.mu.Lock()
	r.state = reqDone
	why := r.abortWhy
	r.mu.Unlock()
	if err != nil {
		if why != nil {
			err = fmt.Errorf("%w (%w)", why, err)
		}
		return nil, r.opError(err)
	}
	r.conn = c
	return c, nil
}

func (r *TCPRequest) opError(err error) error {
	return &net.OpError{Op: "accept", Net: "tcp", Source: net.TCPAddrFromAddrPort(r.dst),
		Addr: net.TCPAddrFromAddrPort(r.src), Err: err}
}

func (r *TCPRequest) acceptGVisor() (*tcpConn, error) {
	wq := new(waiter.Queue)
	r.mu.Lock()
	r.wq = wq
	r.mu.Unlock()
	ep, terr := r.fr.CreateEndpoint(wq)
	if terr != nil {
		r.fr.Complete(true)
		return nil, convertError(terr)
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
	c := &tcpConn{Conn: gonet.NewTCPConn(wq, ep), s: r.s, ep: ep, wq: wq}
	if !r.s.addConn(c) {
		ep.Abort()
		return nil, errStackClosed
	}
	return c, nil
}

// acceptSystem completes the app's handshake in system TCP mode.
func (r *TCPRequest) acceptSystem() (*tcpConn, error) {
	s := r.s
	tc, err := s.sys.accept(r.nat, r.abort)
	if err != nil {
		return nil, err
	}
	c := &tcpConn{Conn: tc, s: s, kernel: tc, nat: r.nat}
	if !s.addConn(c) {
		tc.SetLinger(0)
		tc.Close()
		s.sys.remove(r.nat)
		return nil, errStackClosed
	}
	return c, nil
}

// Detach lets the Handler return before the flow it serves has ended,
// for a relay that needs no goroutine while the flow idles
// (relay.StreamAsync). The Handler's context ends at once (a detached
// flow holds none); instead Stack.Close calls stop (once, after it has
// closed the accepted connection), which must end the flow. Stack.Close
// waits for the flow until the returned function is called, once the
// flow has ended (calls after the first do nothing). Call it on the
// Handler's goroutine, after a successful Accept, before the Handler
// returns.
func (r *TCPRequest) Detach(stop func()) (done func()) {
	r.detached = true
	r.cancel(nil)
	s := r.s
	c := r.conn
	if c != nil {
		s.mu.Lock()
		closed := s.closed
		if !closed {
			c.stop = stop
		}
		s.mu.Unlock()
		if closed {
			stop()
		}
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			s.handlers.Done()
		}
	}
}

// abortHandshake makes a pending Accept give up, for why.
func (r *TCPRequest) abortHandshake(why error) {
	r.mu.Lock()
	if r.state != reqAccepting || r.abortWhy != nil {
		r.mu.Unlock()
		return
	}
	r.abortWhy = why
	r.mu.Unlock()
	if why == errHandshakeTimeout {
		r.s.tcpHandshakeTimeouts.Add(1)
	}
	if r.nat != nil {
		close(r.abort)
		return
	}
	r.poke()
}

// poke wakes gVisor's Forwarder out of CreateEndpoint, which waits for a
// writable event on our queue and then looks at the endpoint's state: still
// in SYN-RCVD, it closes the endpoint and fails (transport/tcp/accept.go
// performHandshake in the pinned gVisor). The wait is registered inside
// CreateEndpoint, so an event sent before it would be lost: poke repeats
// until Accept has returned.
func (r *TCPRequest) poke() {
	r.mu.Lock()
	wq := r.wq
	waiting := r.state == reqAccepting
	r.mu.Unlock()
	if !waiting {
		return
	}
	if wq != nil {
		wq.Notify(waiter.WritableEvents)
	}
	time.AfterFunc(pokeInterval, r.poke)
}

const pokeInterval = 20 * time.Millisecond

// shed gives up the attempt to make room for newer ones (see handshakes).
func (r *TCPRequest) shedAttempt() {
	r.s.tcpShed.Add(1)
	r.mu.Lock()
	switch r.state {
	case reqDeciding:
		r.state, r.shed = reqDone, true
		r.mu.Unlock()
		r.cancel(errShed) // stops the Handler's upstream dial
		if r.nat != nil {
			r.s.sys.remove(r.nat)
		} else {
			r.fr.Complete(false)
		}
	case reqAccepting:
		r.mu.Unlock()
		r.abortHandshake(errShed)
	default:
		r.mu.Unlock()
	}
}

// Reject answers the app's SYN with a RST at once ("connection refused").
// It does nothing after Accept or a previous Reject.
func (r *TCPRequest) Reject() {
	if ok, _ := r.decide(reqDone); !ok {
		return
	}
	r.s.hs.remove(r)
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
	if ok, _ := r.decide(reqDone); !ok {
		return
	}
	r.s.hs.remove(r)
	r.s.tcpRejected.Add(1)
	if r.nat != nil {
		r.s.sys.remove(r.nat)
		return
	}
	r.fr.Complete(false)
}

// forwardTCP is gVisor's forwarder callback. gVisor already runs it on a new
// goroutine per SYN; the Handler runs right here so that goroutine is the
// handler's own and is tracked for Close. A Handler that detaches
// (TCPRequest.Detach) returns and the goroutine ends while the flow goes
// on; one that does not waits for the flow's whole life: its frame is
// kept small (the request is built in forwardedRequest) so that the idle
// stack stays under a quarter of 8 KiB and the collector halves it (see
// relay.Stream's Poller).
func (s *Stack) forwardTCP(fr *tcp.ForwarderRequest) {
	s.handleRequest(s.forwardedRequest(fr))
}

//go:noinline
func (s *Stack) forwardedRequest(fr *tcp.ForwarderRequest) *TCPRequest {
	id := fr.ID()
	return &TCPRequest{
		s:   s,
		fr:  fr,
		src: netip.AddrPortFrom(addrFromTCPIP(id.RemoteAddress), id.RemotePort),
		dst: netip.AddrPortFrom(addrFromTCPIP(id.LocalAddress), id.LocalPort),
	}
}

// startSystemRequest hands a SYN the system TCP mode holds to the Handler,
// on a goroutine of its own (the packet loop must not wait).
func (s *Stack) startSystemRequest(e *natEntry, src, dst netip.AddrPort) {
	go s.handleRequest(&TCPRequest{s: s, nat: e, src: src, dst: dst, abort: make(chan struct{})})
}

// handleRequest admits r to the handshake table and runs the Handler for it
// on the calling goroutine, which it tracks for Close.
func (s *Stack) handleRequest(r *TCPRequest) {
	// The request goes deep at once: the dial under the router, gVisor's
	// handshake under Accept.
	growstack.Grow()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.Reject()
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancelCause(s.ctx)
	r.cancel = cancel
	if victim := s.hs.add(r); victim != nil {
		victim.shedAttempt()
	}
	s.tcpTotal.Add(1)
	s.handler.HandleTCP(ctx, r)
	if ok, _ := r.decide(reqDone); ok {
		// The handler broke its contract; never leave the app hanging.
		s.hs.remove(r)
		s.handlerUndecided.Add(1)
		s.tcpRejected.Add(1)
		if r.nat != nil {
			s.sys.reject(r.nat)
		} else {
			r.fr.Complete(true)
		}
		s.log.Warn("TCP handler returned without Accept or Reject; sent RST", "src", r.src, "dst", r.dst)
	}
	if !r.detached {
		cancel(nil)
		s.handlers.Done()
	}
}

// tcpConn is an accepted connection of either TCP stack: it counts payload
// bytes and unregisters itself on Close.
type tcpConn struct {
	Conn // *gonet.TCPConn, or in system TCP mode *net.TCPConn
	s    *Stack
	// ep is the gVisor endpoint behind Conn; nil in system TCP mode.
	ep tcpip.Endpoint
	// kernel and nat are set in system TCP mode: the kernel socket for
	// the relay to splice on, and the translation that expires after
	// Close.
	kernel    *net.TCPConn
	nat       *natEntry
	closeOnce sync.Once

	// wq is set in gVisor mode, for WaitRead and NotifyRead (see
	// waitread.go).
	wq           *waiter.Queue
	readDeadline atomic.Int64 // UnixNano, 0 for none: gonet keeps its own private copy
	// writeDeadline: a write deadline was set (Write then leaves all to
	// gonet, which keeps it).
	writeDeadline atomic.Bool
	waitTimer     *time.Timer // WaitRead's, made on its first timed wait
	// unmoderated: bytes ReadTo took that ModerateRecvBuf was not told
	// of yet (see moderateMin); the reader's only.
	unmoderated int
	// wr is writeNow's reader, under wrMu.
	wrMu   sync.Mutex
	wr     bytes.Reader
	nmu    sync.Mutex
	notify *readNotify // NotifyRead's registration
	stop   func()      // a detached flow's (TCPRequest.Detach), under s.mu
}

// SetLinger is net.TCPConn's SetLinger: with 0, Close resets the
// connection (RST) instead of closing it (a flow accepted before its
// upstream refused it); negative restores the graceful close.
func (c *tcpConn) SetLinger(sec int) error {
	if c.kernel != nil {
		return c.kernel.SetLinger(sec)
	}
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(max(sec, 0)) * time.Second})
	return nil
}

func (c *tcpConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.s.bytesUp.Add(uint64(n))
	return n, err
}

func (c *tcpConn) Write(p []byte) (int, error) {
	done := 0
	if c.ep != nil && len(p) <= directWriteMax && !c.writeDeadline.Load() {
		done = c.writeNow(p)
		if done == len(p) {
			c.s.bytesDown.Add(uint64(done))
			return done, nil
		}
	}
	// The rest, waiting for room, with gonet's deadline and errors.
	n, err := c.Conn.Write(p[done:])
	n += done
	c.s.bytesDown.Add(uint64(n))
	return n, err
}

// directWriteMax is the largest write tcpConn.Write hands the endpoint
// itself: a reply of a request/response exchange, not bulk transfer.
const directWriteMax = 16 << 10

// writeNow writes what of p the endpoint takes now, without waiting, and
// returns how much that was (an error is left for gonet's Write to meet
// again and report). gonet's Write allocates a bytes.Reader and a
// waiter.Entry on every call (both escape), and checks its deadline
// under a mutex: on a 1-byte round trip's reply, on its way to the app.
//
// The reader is the connection's own (a sync.Pool's Get and Put cost
// more than the rest of this function); a concurrent Write, which
// finds it taken, uses one of the pool's.
func (c *tcpConn) writeNow(p []byte) int {
	r := &c.wr
	own := c.wrMu.TryLock()
	if !own {
		r = byteReaders.Get().(*bytes.Reader)
	}
	r.Reset(p)
	res, _ := c.ep.Write(r, tcpip.WriteOptions{})
	r.Reset(nil)
	if own {
		c.wrMu.Unlock()
	} else {
		byteReaders.Put(r)
	}
	return int(res)
}

var byteReaders = sync.Pool{New: func() any { return new(bytes.Reader) }}

// moderateMin is how many bytes ReadTo's reads add up to before it tells
// the endpoint (ModerateRecvBuf, which grows the receive buffer with
// the bytes the reader takes per round trip). Each call takes the
// endpoint's locks, reads the clock and, when segments came meanwhile,
// wakes gVisor's processor: for the 1-byte request of a round trip that
// was half of ReadTo's cost, for a count that only matters at bulk
// rates, where each read takes a segment or more (up to 64 KiB) and
// goes on to the endpoint at once.
const moderateMin = 4 << 10

// ReadTo hands the bytes waiting to be read to w without a buffer of the
// caller's (relay.DirectReader): w.Write is called with the stack's own
// buffers, one per segment received, and only what it reports written is
// consumed; the rest waits for the next call. w.Write must not keep p
// (the stack reuses it), and may write less than p only with an error,
// which w keeps itself: gVisor drops it, and ReadTo then returns what w
// took (or 0 and an error when w took nothing). ReadTo does not wait: 0,
// nil when nothing is waiting; io.EOF after the app's FIN. It ignores the
// read deadline. One goroutine at a time may call it (the connection's
// reader), not with Read. In system TCP mode it fails: the relay splices
// the kernel socket there.
func (c *tcpConn) ReadTo(w io.Writer) (int, error) {
	if c.ep == nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errors.ErrUnsupported}
	}
	res, terr := c.ep.Read(w, tcpip.ReadOptions{})
	n := res.Count
	if n > 0 {
		// As gonet's Read: the receive window grows with what the
		// reader takes (receive-buffer moderation). Small reads are
		// added up and told in one call (see moderateMin).
		c.unmoderated += n
		if c.unmoderated >= moderateMin {
			c.ep.ModerateRecvBuf(c.unmoderated)
			c.unmoderated = 0
		}
		c.s.bytesUp.Add(uint64(n))
	}
	switch terr.(type) {
	case nil:
		return n, nil
	case *tcpip.ErrWouldBlock:
		return 0, nil
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF
	}
	// *tcpip.ErrBadBuffer: w failed at its first byte.
	return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: convertError(terr)}
}

// NotifyClose calls fn once after Close, at once if the connection is
// closed already (relay.CloseNotifier): in system TCP mode, the relay
// parks an idle direction on the kernel socket, and a closed socket leaves
// the relay's epoll set without an event. A later call replaces an
// earlier fn. In gVisor mode it does nothing: closing the endpoint
// notifies its readers (see NotifyRead).
func (c *tcpConn) NotifyClose(fn func()) {
	if c.nat == nil {
		return
	}
	c.nmu.Lock()
	if c.nat.connClosed {
		c.nmu.Unlock()
		fn()
		return
	}
	c.nat.onClose = fn
	c.nmu.Unlock()
}

// KernelConn lets the relay splice on the kernel socket
// (relay.KernelConner); nil for a gVisor connection. Bytes spliced bypass
// the counters.
func (c *tcpConn) KernelConn() *net.TCPConn { return c.kernel }

func (c *tcpConn) Close() error {
	err := c.Conn.Close()
	if c.nat != nil {
		c.nmu.Lock()
		c.nat.connClosed = true
		fn := c.nat.onClose
		c.nat.onClose = nil
		c.nmu.Unlock()
		if fn != nil {
			fn()
		}
	}
	c.closeOnce.Do(func() {
		c.s.mu.Lock()
		delete(c.s.tcpConns, c)
		c.s.mu.Unlock()
		c.s.tcpOpen.Add(-1)
		if c.nat != nil {
			c.s.sys.closed(c.nat)
		}
	})
	if err != nil {
		return fmt.Errorf("stack: close: %w", err)
	}
	return nil
}

// addConn registers an accepted connection; false when the stack closed.
func (s *Stack) addConn(c *tcpConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.tcpConns[c] = struct{}{}
	s.tcpOpen.Add(1)
	return true
}
