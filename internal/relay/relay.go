// Package relay is the one stream relay and the one packet relay of tunsocks.
//
// Stream copies both directions of two connections, passes a half-close
// (FIN) from one side on to the other, reaps the pair when it has been idle,
// and lets the kernel splice when both sides are TCP sockets. Packets pumps
// datagrams both ways under an idle timer. Every proxy path in the module
// (SOCKS server, TUN router) relays through here.
package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/growstack"
	"github.com/tunsocks/tunsocks/internal/handoff"
)

// bufSize is the copy buffer of one direction: two of the 64 KiB segments
// the netstack takes from and gives to the TUN, so one bulk read from the
// upstream socket feeds the netstack two full segments, and one write to
// it drains two. Against 32 KiB it cut the TUN program's CPU time per
// byte of a single bulk stream by a fifth (benchtool's "CPU time per MB"
// rows, A/B). A direction holds one only while bytes move: it waits for
// the next bytes without one when its source can (see ReadWaiter,
// ReadNotifier and kernelReader), so an idle relay holds none.
const bufSize = 128 << 10

// bigBufSize is the buffer of a direction whose last read from a kernel
// socket took at least bufSize: a bulk download, whose upstream socket
// holds more than a buffer's worth at nearly every read. Each read of
// a TCP socket costs a system call and, as it frees the receive window,
// usually an ACK that the kernel sends to the upstream in that call
// (through the veth and the upstream's receive path); each write of a
// buffer into the netstack ends in a short segment (the buffer is not a
// whole number of the netstack's 64 KiB segments), one more TUN write.
// Four times fewer of both per byte. Only a flow that keeps its upstream
// socket that full takes one.
const bigBufSize = 512 << 10

var (
	bufPool    = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
	bigBufPool = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}
)

// getBuf takes a copy buffer from its pool: a big one (bigBufSize) when
// big is set, else one of bufSize.
func getBuf(big bool) *[]byte {
	if big {
		return bigBufPool.Get().(*[]byte)
	}
	return bufPool.Get().(*[]byte)
}

// putBuf puts a buffer of getBuf's back into its pool.
func putBuf(bp *[]byte) {
	if len(*bp) == bigBufSize {
		bigBufPool.Put(bp)
		return
	}
	bufPool.Put(bp)
}

// StreamOptions tunes Stream. The zero value relays with no timers.
type StreamOptions struct {
	// Idle closes both connections when no byte has moved either way for
	// this long (detected within 3 x Idle, see copyHalf). Zero disables it.
	Idle time.Duration
	// HalfClose bounds how long the pair stays open after one direction has
	// finished (its reader saw EOF and the FIN was passed on). Zero means
	// only Idle applies.
	HalfClose time.Duration
	// Up and Down, when not nil, are increased as bytes move a->b and b->a,
	// while they move, so a summary can report live flows.
	Up, Down Counter
	// Activity, when not nil, is the pair's last-activity clock
	// (time.UnixNano of the last bytes moved either way), so the caller can
	// tell the flows idle the longest. Bytes spliced are seen when a splice
	// returns, at the latest when the source runs dry.
	Activity *atomic.Int64
	// Poller, when not nil, lets the b->a direction park once b (a kernel
	// TCP socket) has had nothing to read for ParkAfter while the a->b
	// direction still runs (closing a, or cancelling ctx, ends a Stream
	// as always; closing only b does not wake a parked direction before
	// the idle timer): it then waits on the Poller instead of on a
	// goroutine of its own, and the caller waits for the Stream with a
	// shallow stack, which the garbage collector halves. An idle
	// connection then holds no goroutine for that direction.
	//
	// When a is a kernel TCP socket too (a KernelConner, such as the
	// system TCP stack's connections) and a CloseNotifier, the a->b
	// direction parks the same way, and an idle pair holds no goroutine
	// at all; closing a then resumes both directions.
	Poller *Poller
	// ParkAfter is how long the b->a direction reads on its goroutine
	// after its last bytes before it parks on the Poller; while bytes
	// flow it never parks (a parked direction takes one more wakeup to
	// resume). Default 2 s.
	ParkAfter time.Duration
}

// defaultParkAfter is StreamOptions.ParkAfter's default.
const defaultParkAfter = 2 * time.Second

// Counter counts bytes as they move; *atomic.Int64 is one. A caller that
// counts each flow and a total passes a Counter that adds to both.
type Counter interface {
	Add(delta int64) (new int64)
}

// closeWriter is a connection that can send a FIN without closing its read side.
type closeWriter interface{ CloseWrite() error }

// ReadNotifier is a connection that can call back once it has something
// to read (the netstack's connections): NotifyRead calls fn once, when a
// Read would not block (bytes, the end of the stream or an error are
// there, or the connection was closed), at once if that is so already.
// fn must not block. The relay direction reading such a connection then
// needs no goroutine while the connection is idle.
type ReadNotifier interface {
	NotifyRead(fn func())
}

// CloseNotifier is a connection that can call back once it is closed:
// NotifyClose calls fn once, after Close (at once if it was closed
// already). fn must not block. A kernel socket leaves the Poller's epoll
// set without an event when it is closed, so a relay direction parks on
// a kernel socket a only when a is a CloseNotifier (StreamOptions.Poller).
type CloseNotifier interface {
	NotifyClose(fn func())
}

// DirectReader is a connection that can hand what it has to read to a
// writer without a buffer of the caller's (the netstack's connections):
// ReadTo calls w.Write with the connection's own buffers and consumes
// only what w reports written, the rest waiting for the next call; it
// does not wait (0, nil when nothing is there), returns io.EOF at the
// end of the stream, and w's error, with what w took before, when w
// fails. The relay direction reading such a connection into a kernel TCP
// socket then writes the connection's bytes to the socket from where
// they are, a copy fewer.
type DirectReader interface {
	ReadTo(w io.Writer) (int, error)
}

// ReadWaiter is a connection that can wait for its next bytes without a
// buffer (the netstack's connections): WaitRead returns once a Read would
// not block (bytes, the end of the stream or an error are there), or with
// an error wrapping os.ErrDeadlineExceeded when the read deadline passes.
// The relay then takes a buffer from its pool only for the Read, so an
// idle connection holds none.
type ReadWaiter interface {
	WaitRead() error
}

// Stream relays between a and b until both directions have finished, the
// pair has been idle for opts.Idle, or ctx is done. It closes a and b before
// it returns. It returns the bytes copied a->b and b->a and the first error
// that is not an ordinary end of stream (io.EOF, net.ErrClosed and a reset
// after the other side finished are ordinary).
func Stream(ctx context.Context, a, b net.Conn, opts StreamOptions) (up, down int64, err error) {
	w := make(chan result3, 1)
	if startParking(ctx, a, b, &opts, func(up, down int64, err error) { w <- result3{up, down, err} }) != nil {
		r := <-w
		return r.up, r.down, r.err
	}
	return streamOnCaller(ctx, a, b, &opts)
}

// result3 is how a whole Stream ended.
type result3 struct {
	up, down int64
	err      error
}

// StreamAsync starts what Stream does and returns at once, true, when the
// relay can run without a goroutine waiting for it: opts has a Poller, b
// is a kernel TCP socket, and a is either a ReadNotifier that is not a
// kernel socket (a netstack connection) or a kernel TCP socket (a
// *net.TCPConn, or a KernelConner such as the system TCP stack's
// connections; with no goroutine while idle when it is a CloseNotifier
// too, see StreamOptions.Poller). An idle pair then holds no goroutine at
// all, neither the caller's nor one per direction. done is called once,
// on a goroutine of the relay's, with what Stream would have returned,
// after both connections are closed; it may run before StreamAsync
// returns. A ctx that is never done (Done returns nil, as
// context.WithoutCancel's) costs the relay nothing: it is then ended by
// its connections and its timers only. False: nothing was started, and
// the caller calls Stream.
func StreamAsync(ctx context.Context, a, b net.Conn, opts StreamOptions, done func(up, down int64, err error)) bool {
	if _, ok := a.(ReadNotifier); !ok && tcpOf(a) == nil {
		return false
	}
	return startParking(ctx, a, b, &opts, done) != nil
}

// streamOnCaller is Stream with b->a copied on the caller's goroutine.
//
//go:noinline
func streamOnCaller(ctx context.Context, a, b net.Conn, o *StreamOptions) (up, down int64, err error) {
	opts := *o
	p := &pair{a: a, b: b, halfClose: opts.HalfClose, last: opts.Activity}
	if p.last == nil {
		p.last = new(atomic.Int64)
	}
	stop := context.AfterFunc(ctx, p.closeBoth)
	defer stop()
	p.touch()

	// a->b runs on a goroutine of its own, b->a on the caller's: one
	// goroutine fewer per connection, which is measurable at thousands of
	// short connections a second. The router passes the app's netstack
	// conn as a; writing into the netstack is the deeper call chain, and
	// the caller's stack has already grown through the netstack's handshake.
	upc := make(chan result, 1)
	if n, ok := a.(ReadNotifier); ok && tcpOf(a) == nil {
		// a->b needs no goroutine while a is idle: it runs when a has
		// bytes and parks on a's notification again once it is drained.
		// Its idle time is watched by a timer (see watchIdle).
		h := &notifiedHalf{p: p, src: a, dst: b, kdst: kernelConnOf(b), n: n, count: opts.Up, done: func(r result) { upc <- r }}
		h.wakeFn = h.wake
		if opts.Idle > 0 {
			p.watchIdle(opts.Idle)
			defer p.stopWatch()
		}
		n.NotifyRead(h.wakeFn)
	} else {
		go func() {
			n, err := copyHalf(b, a, opts.Up, p.touch, p.last, opts.Idle)
			p.finished(err)
			upc <- result{n, err}
		}()
	}
	down, derr := copyHalf(a, b, opts.Down, p.touch, p.last, opts.Idle)
	p.finished(derr)
	up = (<-upc).n

	p.mu.Lock()
	if p.halfTimer != nil {
		p.halfTimer.Stop()
	}
	first := p.first
	p.mu.Unlock()
	p.closeBoth()
	return up, down, first
}

// result is how a direction of a Stream ended.
type result struct {
	n   int64
	err error
}

// pair is the state both directions of a Stream share.
type pair struct {
	a, b      net.Conn
	halfClose time.Duration // StreamOptions.HalfClose
	last      *atomic.Int64 // UnixNano of the last byte moved either way
	closeOnce sync.Once
	closed    atomic.Bool

	mu        sync.Mutex
	ended     int         // directions that have finished
	first     error       // the first real error, see Stream
	halfTimer *time.Timer // armed when the first direction ends cleanly

	parked   *polledHalf // the b->a direction, which may park on a Poller, if any
	parkedUp *polledHalf // the a->b direction, when a is a kernel socket too
	oneEnded atomic.Bool // a direction has finished

	idle      time.Duration // StreamOptions.Idle, for watchIdle
	idleTimer *time.Timer   // watchIdle's, under mu
}

func (p *pair) touch() { p.last.Store(time.Now().UnixNano()) }

func (p *pair) closeBoth() {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.a.Close()
		p.b.Close()
		p.unparkAll()
	})
}

// unparkAll resumes the directions parked on a Poller, if any.
func (p *pair) unparkAll() {
	if p.parked != nil {
		p.parked.unpark()
	}
	if p.parkedUp != nil {
		p.parkedUp.unpark()
	}
}

// finished records the end of one direction: a real error ends the other
// direction too; a clean end of the first one starts the half-close timer.
func (p *pair) finished(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ended++
	p.oneEnded.Store(true)
	if p.parked != nil || p.parkedUp != nil {
		// A direction parked on a Poller would not notice its socket
		// being closed (a closed socket leaves the epoll set without an
		// event), and the caller may close both connections itself:
		// resume it, and it parks no more (see polledHalf.park).
		p.unparkAll()
	}
	if err != nil {
		if p.first == nil && !p.closed.Load() {
			p.first = err
		}
		p.closeBoth()
		return
	}
	if p.ended == 1 && p.halfClose > 0 {
		p.halfTimer = time.AfterFunc(p.halfClose, p.closeBoth)
	}
}

// notifiedHalf is the a->b direction of a Stream whose a is a
// ReadNotifier: it copies on a goroutine of its own only while a has
// bytes, and parks on a's notification when a is drained.
type notifiedHalf struct {
	p        *pair
	src, dst net.Conn
	kdst     *kernelConn // dst when it is a kernel TCP socket, else nil
	n        ReadNotifier
	count    Counter
	total    int64          // touched by one run at a time
	done     func(result)   // how the direction ends, unless s is set
	s        *parkingStream // its Stream's, for a parking Stream
	pl       *Poller        // its Stream's, whose workers run it; nil without one
	wakeFn   func()         // wake, made once
	kw       kernelWriter   // runDirect's, touched by one run at a time
}

// wake is the notification: src has something to read. It is called
// on the goroutine that made src readable (gVisor's TCP processor, under
// the endpoint's lock), which is about to go back to sleep: the direction
// starts there without waking an idle processor of the runtime for it,
// and runs on that thread once the processor sleeps (see handoff). It
// runs on a worker of the Poller's when one is waiting (see workers),
// else on a goroutine of its own.
func (h *notifiedHalf) wake() {
	handoff.Hold()
	if h.pl == nil || !h.pl.runNotified(h) {
		go h.run()
	}
	handoff.Release()
}

// run copies until src is drained (then parks again) or ends (then
// finishes the direction as copyHalf would), on a goroutine started for
// it.
func (h *notifiedHalf) run() {
	// Reading the netstack connection goes deep at once (gVisor's
	// receive path under ReadTo or Read): grown doubling by doubling, a
	// new goroutine's stack was copied and adjusted at every request of
	// a round trip.
	growstack.Grow()
	h.runGrown()
}

// runGrown is run on a goroutine whose stack has grown already: a
// Poller's worker, which grew it once when it started (see
// workers.work). Growing it again at every run was not free: Grow
// zeroes its 12 KiB frame (about half a microsecond, and a third of the
// L1 data cache evicted) on every request of a round trip, before the
// request went upstream.
func (h *notifiedHalf) runGrown() {
	if h.kdst != nil {
		if d, ok := h.src.(DirectReader); ok {
			h.runDirect(d)
			return
		}
	}
	bp := getBuf(false)
	defer func() {
		if bp != nil {
			putBuf(bp)
		}
	}()
	for {
		nr, err := h.src.Read(*bp)
		if nr > 0 {
			if werr := h.p.forward(h.dst, h.kdst, (*bp)[:nr], &h.total, h.count); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			h.end(err)
			return
		}
		if nr < len(*bp) {
			// Drained: park. The next run may start at once, on another
			// goroutine; this one touches nothing of h after this.
			putBuf(bp)
			bp = nil
			h.n.NotifyRead(h.wakeFn)
			return
		}
	}
}

// runDirect is run for a src that hands its bytes over (DirectReader) to
// a kernel socket: they go from src's buffers straight into the socket,
// and the direction takes no buffer at all.
func (h *notifiedHalf) runDirect(d DirectReader) {
	n, err := readToKernel(d, h.kdst, &h.kw)
	if n > 0 {
		h.p.moved(int64(n), &h.total, h.count)
	}
	if err != nil {
		h.end(err)
		return
	}
	// Drained: readToKernel returns once src has nothing more to read
	// (it waits while the socket is full), so park at once, as run does,
	// without one more call that would find nothing: what came since
	// wakes the direction again at once (NotifyRead looks at src after
	// it registers).
	h.n.NotifyRead(h.wakeFn)
}

// end finishes the direction after src's end or err, as copyHalf would.
func (h *notifiedHalf) end(err error) {
	if err == io.EOF || isOrdinary(err) {
		if cw, ok := h.dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			h.dst.Close()
		}
		err = nil
	}
	h.p.finished(err)
	if h.s != nil {
		h.s.halfDone(true, result{h.total, err})
	} else {
		h.done(result{h.total, err})
	}
}

// forward writes b to dst for a direction that counts its own bytes:
// what was written goes into *total, count and the pair's activity clock.
// A short write is io.ErrShortWrite. kdst, when not nil, is dst's kernel
// socket, written with writeKernel when b is small (a request, not bulk
// transfer: a large write sends, through the loopback or a veth, in the
// writer's system call, long enough for the scheduler to want its P back).
func (p *pair) forward(dst net.Conn, kdst *kernelConn, b []byte, total *int64, count Counter) error {
	var nw int
	var err error
	if kdst != nil && len(b) <= rawWriteMax {
		nw, err = writeKernel(kdst.tc, kdst.rc, b)
	} else {
		nw, err = dst.Write(b)
	}
	if nw > 0 {
		p.moved(int64(nw), total, count)
	}
	if err == nil && nw != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// moved counts n bytes a direction moved: into *total (the direction's
// own), count and the pair's activity clock.
func (p *pair) moved(n int64, total *int64, count Counter) {
	*total += n
	p.touch()
	if count != nil {
		count.Add(n)
	}
}

// watchIdle closes the pair once nothing has moved either way for idle,
// looking every idle: the idle timer of a direction that parks without a
// goroutine (and so without a read deadline). Call stopWatch when the
// Stream ends.
func (p *pair) watchIdle(idle time.Duration) {
	p.mu.Lock()
	p.idle = idle
	p.idleTimer = time.AfterFunc(idle, p.checkIdle)
	p.mu.Unlock()
}

// checkIdle is watchIdle's timer.
func (p *pair) checkIdle() {
	if time.Since(time.Unix(0, p.last.Load())) < p.idle {
		p.mu.Lock()
		if p.idleTimer != nil { // not stopped since
			p.idleTimer.Reset(p.idle)
		}
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	if p.first == nil && !p.closed.Load() {
		p.first = ErrIdle
	}
	p.mu.Unlock()
	p.closeBoth()
}

// stopWatch stops watchIdle's timer, if any.
func (p *pair) stopWatch() {
	p.mu.Lock()
	if p.idleTimer != nil {
		p.idleTimer.Stop()
		p.idleTimer = nil
	}
	p.mu.Unlock()
}

// ErrIdle is returned by Stream and Packets when they closed an idle pair.
var ErrIdle = errors.New("relay: idle timeout")

// copyHalf copies src to dst and, at src's EOF, half-closes dst (or closes it
// when it cannot half-close). It returns nil for an ordinary end.
//
// Between two kernel TCP sockets (on Linux) the bytes move inside the
// kernel (see splice_linux.go); otherwise through a pooled buffer, held
// only while bytes move.
//
// The idle timer is a read deadline on src, set once and renewed only when
// it fires (renewing it before every read costs a timer per read on a
// netstack conn). When it fires, the direction looks at the pair's last
// activity (either way, its own reads included): if bytes moved recently, it
// sets the next deadline and reads on; otherwise the pair is idle. Deadlines
// fire every Idle and "recently" means within 2 x Idle, so a pair silent for
// Idle is closed after at most 3 x Idle. This costs no goroutine or timer of
// its own.
func copyHalf(dst, src net.Conn, count Counter, touch func(), last *atomic.Int64, idle time.Duration) (int64, error) {
	var total int64
	var sp *splicer
	if srcTCP, dstTCP := tcpOf(src), tcpOf(dst); srcTCP != nil && dstTCP != nil {
		sp = newSplicer(dstTCP, srcTCP)
	}
	var bp *[]byte
	var read func(**[]byte) (int, error)
	big, bigOK := false, false // see polledHalf.run; bigOK: src is read by readKernel
	defer func() {
		if bp != nil {
			putBuf(bp)
		}
	}()
	if idle > 0 {
		src.SetReadDeadline(time.Now().Add(idle))
	}
	for {
		var n int64
		var err error
		eof := false
		if sp != nil {
			n, eof, err = sp.move()
			if err == errNoSplice {
				sp = nil
				continue
			}
		} else {
			// The buffer is held only while bytes move: read takes it
			// from the pool once bytes are there (where src can say so),
			// and a short read puts it back before the next wait.
			if read == nil {
				read, bigOK = pooledRead(src, &big)
			}
			var nr int
			nr, err = read(&bp)
			if nr > 0 {
				nw, werr := dst.Write((*bp)[:nr])
				n = int64(nw)
				if werr != nil {
					err = werr
				} else if nw != nr {
					err = io.ErrShortWrite
				}
			}
			if err == io.EOF {
				eof, err = true, nil
			}
			big = bigOK && nr >= bufSize
			if bp != nil && (nr < len(*bp) || big && len(*bp) < bigBufSize) {
				// A short read: the source is likely drained, and the
				// next read likely waits. Wait without the buffer. Or
				// a small buffer filled: the next read takes a big one.
				putBuf(bp)
				bp = nil
			}
		}
		if n > 0 {
			total += n
			touch()
			if count != nil {
				count.Add(n)
			}
		}
		if err != nil {
			if idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, last.Load())) < 2*idle {
					src.SetReadDeadline(time.Now().Add(idle))
					continue
				}
				if sp != nil {
					sp.close()
				}
				return total, ErrIdle
			}
			if isOrdinary(err) {
				eof = true
			} else {
				if sp != nil {
					sp.close()
				}
				return total, err
			}
		}
		if eof {
			break
		}
	}
	if sp != nil {
		sp.close()
	}
	if cw, ok := dst.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	return total, nil
}

// pooledRead returns how copyHalf reads src: into *bp, which it takes from
// the pool if nil, once bytes are there when src can wait without a
// buffer (a kernel TCP socket, through the runtime poller; a ReadWaiter);
// otherwise as a plain Read into a buffer taken first. A kernel socket is
// read into a big buffer when *big is set (see bigBufSize); bigOK says src
// is one.
func pooledRead(src net.Conn, big *bool) (read func(bp **[]byte) (int, error), bigOK bool) {
	get := func(bp **[]byte) {
		if *bp == nil {
			*bp = getBuf(false)
		}
	}
	if tc, ok := src.(*net.TCPConn); ok {
		get := func(bp **[]byte) {
			if *bp == nil {
				*bp = getBuf(*big)
			}
		}
		if rc, err := tc.SyscallConn(); err == nil && canReadKernel {
			return newKernelReader(tc, rc, get).read, true
		}
	}
	if w, ok := src.(ReadWaiter); ok {
		return func(bp **[]byte) (int, error) {
			if *bp == nil {
				if err := w.WaitRead(); err != nil {
					return 0, err
				}
				get(bp)
			}
			return src.Read(**bp)
		}, false
	}
	return func(bp **[]byte) (int, error) {
		get(bp)
		return src.Read(**bp)
	}, false
}

// KernelConner is a connection that wraps a kernel TCP socket and lets the
// relay splice on it directly (the netstack's connections in system TCP
// mode: they keep their own Close). Bytes spliced do not pass through the
// wrapper's Read and Write.
type KernelConner interface {
	KernelConn() *net.TCPConn
}

// tcpOf returns the kernel TCP socket behind c, or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	switch c := c.(type) {
	case *net.TCPConn:
		return c
	case KernelConner:
		return c.KernelConn()
	}
	return nil
}

// kernelConn is a kernel TCP socket with its raw descriptor.
type kernelConn struct {
	tc *net.TCPConn
	rc syscall.RawConn
}

// kernelConnOf returns c as a kernelConn when it is a kernel TCP socket
// that writeKernel can write (not a wrapper, which may count or transform
// what is written), nil otherwise.
func kernelConnOf(c net.Conn) *kernelConn {
	tc, ok := c.(*net.TCPConn)
	if !ok || !canReadKernel {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &kernelConn{tc: tc, rc: rc}
}

// isOrdinary reports whether err is how a stream normally ends.
func isOrdinary(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

// parkingStream is a Stream whose b->a direction may park on a Poller:
// no goroutine waits for it; the direction that finishes last ends it.
// It is allocated with its a->b direction (notifiedStream, kernelStream),
// both directions' state in one allocation, which is what an idle
// connection keeps of the relay.
type parkingStream struct {
	pair
	down  polledHalf
	stop  func() bool // the context's AfterFunc; nil for a context never done
	left  atomic.Int32
	upR   result // each written by its direction before left drops
	downR result
	done  func(up, down int64, err error)
}

// notifiedStream is a parkingStream whose a is a ReadNotifier.
type notifiedStream struct {
	parkingStream
	up notifiedHalf
}

// kernelStream is a parkingStream whose a is a kernel TCP socket: its a->b
// direction parks on the Poller as the b->a one does.
type kernelStream struct {
	parkingStream
	up polledHalf
}

// halfDone records the end of one direction; the last one ends the
// Stream.
func (s *parkingStream) halfDone(up bool, r result) {
	if up {
		s.upR = r
	} else {
		s.downR = r
	}
	if s.left.Add(-1) == 0 {
		s.end()
	}
}

// startParking starts a Stream whose b->a direction reads on a polledHalf,
// when opts has a Poller and b is a kernel TCP socket; done is called when
// it ended. Else it returns nil and starts nothing. The a->b direction is
// a polledHalf too when a is a kernel socket, a notifiedHalf when a is a
// ReadNotifier, else a goroutine of its own.
//
// Not inlined: Stream's caller waits for the flow's whole life in Stream's
// frame, which is kept small so that the collector halves its stack.
//
//go:noinline
func startParking(ctx context.Context, a, b net.Conn, o *StreamOptions, done func(up, down int64, err error)) *parkingStream {
	if o.Poller == nil || !canReadKernel {
		return nil
	}
	bt, ok := b.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := bt.SyscallConn()
	if err != nil {
		return nil
	}
	opts := *o
	if opts.ParkAfter <= 0 {
		opts.ParkAfter = defaultParkAfter
	}
	var s *parkingStream
	var upN *notifiedHalf
	var upK *polledHalf
	var at *net.TCPConn
	var arc syscall.RawConn
	at = tcpOf(a)
	cn, closeNotifies := a.(CloseNotifier)
	if at != nil && closeNotifies {
		if arc, err = at.SyscallConn(); err != nil {
			return nil
		}
		ks := &kernelStream{}
		s, upK = &ks.parkingStream, &ks.up
	} else if _, ok := a.(ReadNotifier); ok && at == nil {
		ns := &notifiedStream{}
		s, upN = &ns.parkingStream, &ns.up
	} else {
		s = &parkingStream{}
	}
	s.done = done
	p := &s.pair
	p.a, p.b, p.halfClose, p.last = a, b, opts.HalfClose, opts.Activity
	if p.last == nil {
		p.last = new(atomic.Int64)
	}
	s.left.Store(2)
	h := &s.down
	*h = polledHalf{pollSlot: pollSlot{rc: rc, poller: opts.Poller}, src: bt, dst: a, parkAfter: opts.ParkAfter, count: opts.Down, s: s}
	h.wakeFn = h.wake
	p.parked = h
	if upK != nil {
		*upK = polledHalf{pollSlot: pollSlot{rc: arc, poller: opts.Poller}, src: at, dst: b, parkAfter: opts.ParkAfter, count: opts.Up, s: s}
		upK.wakeFn = upK.wake
		p.parkedUp = upK
	}
	// The Stream's own setup is done before a direction can end it.
	p.touch()
	if opts.Idle > 0 {
		p.watchIdle(opts.Idle)
	}
	if ctx.Done() != nil {
		s.stop = context.AfterFunc(ctx, p.closeBoth)
	}
	switch {
	case upK != nil:
		// Closing a kernel socket wakes nothing parked on it: a says
		// when it is closed, and both directions resume (a parked b->a
		// too, as when a direction finishes).
		cn.NotifyClose(p.unparkAll)
		go upK.run()
	case upN != nil:
		n := a.(ReadNotifier)
		*upN = notifiedHalf{p: p, src: a, dst: b, kdst: &kernelConn{tc: bt, rc: rc}, n: n, count: opts.Up, s: s, pl: opts.Poller}
		upN.wakeFn = upN.wake
		n.NotifyRead(upN.wakeFn)
	default:
		go func() {
			n, err := copyHalf(b, a, opts.Up, p.touch, p.last, opts.Idle)
			p.finished(err)
			s.halfDone(true, result{n, err})
		}()
	}
	go h.run()
	return s
}

// end ends the Stream once both directions have finished.
func (s *parkingStream) end() {
	if s.stop != nil {
		s.stop()
	}
	p := &s.pair
	p.stopWatch()
	p.mu.Lock()
	if p.halfTimer != nil {
		p.halfTimer.Stop()
	}
	first := p.first
	p.mu.Unlock()
	p.closeBoth()
	s.done(s.upR.n, s.downR.n, first)
}

// polledHalf is the b->a direction of a Stream given a Poller (and its
// a->b direction when a is a kernel socket too): it copies on a goroutine
// of its own while src has bytes, and parks on the Poller once src has had
// none for parkAfter. Between two kernel sockets it splices while bytes
// move, as copyHalf does. Its pair is its Stream's (s.pair), and it is
// the a->b direction when it is s.parkedUp: an idle gVisor flow keeps
// one, so it holds no more than it needs.
type polledHalf struct {
	pollSlot  // on src
	src       *net.TCPConn
	dst       net.Conn
	parkAfter time.Duration
	count     Counter
	total     int64          // touched by one run at a time
	s         *parkingStream // its Stream, told when the direction ends
}

// run copies until src has been quiet for parkAfter (then parks) or ends
// (then finishes the direction as copyHalf would).
func (h *polledHalf) run() {
	p := &h.s.pair
	var bp *[]byte
	var sp *splicer
	if dt := tcpOf(h.dst); dt != nil {
		// Made per run, not kept: a parked direction holds no splicer.
		sp = newSplicer(dt, h.src)
	}
	defer func() {
		if bp != nil {
			putBuf(bp)
		}
		if sp != nil {
			sp.close()
		}
	}()
	// big: the last read took a small buffer's worth or more (see
	// bigBufSize).
	big := false
	get := func(bp **[]byte) {
		if *bp == nil {
			*bp = getBuf(big)
		}
	}
	var kr *kernelReader // made once per run
	lastRead := time.Now()
	grown := false
	h.src.SetReadDeadline(lastRead.Add(h.parkAfter))
	for {
		var err error
		eof := false
		if sp != nil {
			var n int64
			n, eof, err = sp.move()
			if err == errNoSplice {
				sp = nil
				continue
			}
			if n > 0 {
				lastRead = time.Now()
				p.moved(n, &h.total, h.count)
			}
		} else {
			var nr int
			if kr == nil {
				kr = newKernelReader(h.src, h.rc, get)
				// A short read (a reply of a request/response
				// exchange) is forwarded inside the reader's wait,
				// which then goes on without a read that finds
				// nothing: one system call fewer per reply.
				kr.sink = func(n int) error {
					if !grown {
						growstack.Grow()
						grown = true
					}
					lastRead = time.Now()
					werr := p.forward(h.dst, nil, (*bp)[:n], &h.total, h.count)
					big = false
					putBuf(bp)
					bp = nil
					return werr
				}
			}
			nr, err = kr.read(&bp)
			if nr > 0 {
				if !grown {
					// Writing into a netstack connection goes deep at
					// once (gVisor's send path down to the TUN
					// device); a run that only waits stays small.
					growstack.Grow()
					grown = true
				}
				lastRead = time.Now()
				if werr := p.forward(h.dst, nil, (*bp)[:nr], &h.total, h.count); werr != nil && err == nil {
					err = werr
				}
			}
			big = nr >= bufSize
			if bp != nil && (nr < len(*bp) || big && len(*bp) < bigBufSize) {
				// Drained (the next read likely waits), or a small
				// buffer filled: the next read takes a big one.
				putBuf(bp)
				bp = nil
			}
			if err == io.EOF {
				eof, err = true, nil
			}
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !p.closed.Load() {
			if quiet := time.Since(lastRead); quiet < h.parkAfter {
				h.src.SetReadDeadline(time.Now().Add(h.parkAfter - quiet))
				continue
			}
			h.src.SetReadDeadline(time.Time{})
			if h.park() {
				return
			}
			continue // no Poller now: read on here
		}
		if err != nil && isOrdinary(err) {
			eof, err = true, nil
		}
		if eof || err != nil {
			if eof {
				if cw, ok := h.dst.(closeWriter); ok {
					cw.CloseWrite()
				} else {
					h.dst.Close()
				}
			}
			p.finished(err)
			h.s.halfDone(h == p.parkedUp, result{h.total, err})
			return
		}
	}
}

// park registers h on the Poller; false when it cannot (the pair or the
// Poller closed), and the caller reads on.
func (h *polledHalf) park() bool {
	p := &h.s.pair
	h.mu.Lock()
	defer h.mu.Unlock()
	if p.closed.Load() || p.oneEnded.Load() {
		// Closed, or half-closed: the other direction has finished, so
		// nothing would wake this one if the caller closed b (a closed
		// socket leaves the epoll set silently). Half-closed flows
		// are few and short (StreamOptions.HalfClose): they keep the
		// goroutine.
		return false
	}
	return h.registerLocked()
}

// wake is registration id's notification: src is readable.
func (h *polledHalf) wake(id uint64) {
	if h.claim(id) {
		go h.run()
	}
}

// unpark resumes a parked h once the pair is closed: its run sees the
// closed socket and finishes the direction.
func (h *polledHalf) unpark() {
	if h.cancel() {
		go h.run()
	}
}
