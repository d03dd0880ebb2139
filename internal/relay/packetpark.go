package relay

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/growstack"
)

// TryPump moves one datagram from one side of a packet relay to the other
// if one is waiting, as a Pump does, but never waits for it: ok is false,
// and nothing was moved, when none was there. Once its side is closed it
// must return an error.
type TryPump func(buf []byte) (n int, ok bool, err error)

// ParkedPackets is what PacketsAsync needs of the two sides besides their
// pumps.
type ParkedPackets struct {
	// UpNotify calls its function once, when the up side has a datagram
	// or is closed (at once if so already); the function does not block
	// (a ReadNotifier's NotifyRead, such as the netstack's UDP flows).
	UpNotify func(fn func())
	// DownConn is the down side's kernel socket, watched by the Poller
	// while the down side is idle.
	DownConn syscall.RawConn
	// DownClosed, when not nil, registers a function called once when
	// the down side's socket was closed by someone other than closeAll
	// (a closed socket leaves the Poller's set without an event), such
	// as a SOCKS association that ended: the down side then resumes and
	// its pump fails.
	DownClosed func(fn func())

	// UpWait and UpDeadline, when both are set, let the up direction
	// wait for its next datagram on its goroutine for ParkAfter after
	// its last datagram either way before it parks (see
	// PacketOptions.ParkAfter): UpWait blocks until a datagram is
	// queued, the side ends, or the deadline UpDeadline set passes
	// (then an error wrapping os.ErrDeadlineExceeded). DownDeadline is
	// the down socket's read deadline, for the same on the down side.
	UpWait       func() error
	UpDeadline   func(time.Time) error
	DownDeadline func(time.Time) error
}

// defaultPacketParkAfter is PacketOptions.ParkAfter's default.
const defaultPacketParkAfter = 100 * time.Millisecond

// PacketsAsync starts what Packets does, and returns at once, true, when
// opts has a Poller: no goroutine waits while the relay is idle. The up
// pump runs on a goroutine of its own only from the up side's
// notification until that side is drained, the down pump only from the
// Poller's notification that its socket is readable until it is drained,
// each with a buffer from the pool only for that run; done is called once
// both have ended, with what Packets would return. closeAll must make
// both pumps fail. False, and nothing started, without a Poller.
func PacketsAsync(ctx context.Context, opts PacketOptions, sides ParkedPackets, up, down TryPump, closeAll func(), done func(up, down int64, err error)) bool {
	if opts.Poller == nil || !canReadKernel || sides.UpNotify == nil || sides.DownConn == nil {
		return false
	}
	r := &parkedRelay{closeAll: closeAll, done: done, idle: opts.Idle, parkAfter: opts.ParkAfter}
	if r.parkAfter <= 0 {
		r.parkAfter = defaultPacketParkAfter
	}
	r.last = opts.Activity
	if r.last == nil {
		r.last = &r.own
	}
	r.left.Store(2)
	r.up = parkedUp{r: r, pump: up, notify: sides.UpNotify, count: opts.Up}
	if sides.UpWait != nil && sides.UpDeadline != nil {
		r.up.wait, r.up.deadline = sides.UpWait, sides.UpDeadline
	}
	r.up.wakeFn = r.up.wake
	r.down = parkedDown{pollSlot: pollSlot{rc: sides.DownConn, poller: opts.Poller}, r: r, pump: down, count: opts.Down, deadline: sides.DownDeadline}
	r.down.wakeFn = r.down.wake
	r.last.Store(time.Now().UnixNano())
	if opts.Idle > 0 {
		r.mu.Lock()
		r.timer = time.AfterFunc(opts.Idle, r.checkIdle)
		r.mu.Unlock()
	}
	if ctx.Done() != nil {
		r.stopCtx = context.AfterFunc(ctx, func() { r.stopWith(nil) })
	}
	if sides.DownClosed != nil {
		sides.DownClosed(r.down.unpark)
	}
	// The down side may have a reply already; the up side may have
	// datagrams queued: each run drains, then parks.
	go r.down.run()
	sides.UpNotify(r.up.wakeFn)
	return true
}

// parkedRelay is one PacketsAsync relay: what an idle UDP flow keeps of
// it, both directions in one allocation.
type parkedRelay struct {
	closeAll  func()
	done      func(up, down int64, err error)
	idle      time.Duration
	parkAfter time.Duration
	last      *atomic.Int64
	own       atomic.Int64
	stopCtx   func() bool
	closed    atomic.Bool
	once      sync.Once
	left      atomic.Int32

	mu     sync.Mutex
	reason error
	timer  *time.Timer

	up   parkedUp
	down parkedDown
}

// stopWith ends the relay for why: both sides are closed and the down
// side resumes if parked, so each pump fails and its direction ends.
func (r *parkedRelay) stopWith(why error) {
	r.once.Do(func() {
		r.mu.Lock()
		r.reason = why
		r.mu.Unlock()
		r.closed.Store(true)
		r.closeAll()
		r.down.unpark()
	})
}

func (r *parkedRelay) checkIdle() {
	since := time.Since(time.Unix(0, r.last.Load()))
	if since >= r.idle {
		r.stopWith(ErrIdle)
		return
	}
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Reset(r.idle - since)
	}
	r.mu.Unlock()
}

// linger waits on a direction's goroutine for its next datagram while
// the relay has moved one either way within parkAfter: true when there
// may be one to read now (or the side ended: the pump says), false when
// the direction should park. wait blocks until a datagram waits or the
// deadline set with setDeadline passes; *armed says a deadline is set.
// A direction that moves datagrams often so never parks: each park and
// wake costs a goroutine start, and the Poller's a system call more and
// a wakeup of its own thread.
func (r *parkedRelay) linger(wait func() error, setDeadline func(time.Time) error, armed *bool) bool {
	for !r.closed.Load() {
		quiet := time.Since(time.Unix(0, r.last.Load()))
		if quiet >= r.parkAfter {
			break
		}
		if !*armed {
			// Set once per run and renewed only when it passes.
			if setDeadline(time.Now().Add(r.parkAfter-quiet)) != nil {
				break
			}
			*armed = true
		}
		err := wait()
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return true
		}
		*armed = false
	}
	if *armed {
		setDeadline(time.Time{})
		*armed = false
	}
	return r.closed.Load()
}

// moved counts n bytes a direction forwarded.
func (r *parkedRelay) moved(n int, total *int64, count Counter) {
	if n <= 0 {
		return
	}
	r.last.Store(time.Now().UnixNano())
	*total += int64(n)
	if count != nil {
		count.Add(int64(n))
	}
}

// halfDone ends one direction after its pump failed with err; the last
// one ends the relay.
func (r *parkedRelay) halfDone(err error) {
	r.stopWith(err)
	if r.left.Add(-1) != 0 {
		return
	}
	if r.stopCtx != nil {
		r.stopCtx()
	}
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	reason := r.reason
	r.mu.Unlock()
	r.done(r.up.total, r.down.total, reason)
}

// parkedUp is the up direction: it runs from the up side's notification
// until the side is drained.
type parkedUp struct {
	r        *parkedRelay
	pump     TryPump
	notify   func(fn func())
	wait     func() error          // ParkedPackets.UpWait, or nil
	deadline func(time.Time) error // ParkedPackets.UpDeadline
	count    Counter
	total    int64  // touched by one run at a time
	wakeFn   func() // wake, made once
}

// wake is the up side's notification; it runs on the side's goroutine
// (gVisor's packet path), which must not wait.
func (u *parkedUp) wake() { go u.run() }

func (u *parkedUp) run() {
	// A run starts on a new goroutine at each wake and goes deep at once
	// (the rules, the outbound's send): grow its stack in one step.
	growstack.Grow()
	if u.r.drain(u.pump, u.count, &u.total, u.wait, u.deadline) {
		return
	}
	// Park. The next run may start at once, on another goroutine; this
	// one touches nothing of u after.
	u.notify(u.wakeFn)
}

// drain is a direction's run up to where it parks: it pumps with a
// pooled buffer while datagrams come, holds no buffer while it waits,
// and lingers (wait, bounded through setDeadline, while the flow has
// been quiet for less than ParkAfter) when the direction has both.
// It reports whether the direction ended (its error is passed to
// halfDone); false means drained, so the caller parks.
func (r *parkedRelay) drain(pump TryPump, count Counter, total *int64, wait func() error, setDeadline func(time.Time) error) bool {
	var bp *[]byte
	armed := false
	for {
		if bp == nil {
			bp = PacketBuf()
		}
		n, ok, err := pump(*bp)
		if err != nil {
			PutPacketBuf(bp)
			r.halfDone(err)
			return true
		}
		if ok {
			r.moved(n, total, count)
			continue
		}
		// Drained: the buffer goes back while the direction waits.
		PutPacketBuf(bp)
		bp = nil
		if wait != nil && setDeadline != nil && r.linger(wait, setDeadline, &armed) {
			continue
		}
		return false
	}
}

// parkedDown is the down direction: it runs from the Poller's
// notification that its socket is readable until it is drained.
type parkedDown struct {
	pollSlot
	r        *parkedRelay
	pump     TryPump
	count    Counter
	deadline func(time.Time) error // ParkedPackets.DownDeadline, or nil
	total    int64                 // touched by one run at a time
}

func (d *parkedDown) run() {
	for !d.r.drain(d.pump, d.count, &d.total, d.waitReadable, d.deadline) {
		if d.park() {
			return
		}
		// Not parked (the relay is closing, or the Poller closed):
		// wait here on the runtime's poller, which a closed socket
		// wakes.
		_ = WaitReadable(d.rc)
	}
}

func (d *parkedDown) waitReadable() error { return WaitReadable(d.rc) }

// park registers d on the Poller; false when it cannot (the relay or the
// Poller closed, or the socket is closed), and the caller waits on.
func (d *parkedDown) park() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.r.closed.Load() {
		return false
	}
	return d.registerLocked()
}

// wake is registration id's notification: the socket is readable.
func (d *parkedDown) wake(id uint64) {
	if d.claim(id) {
		go d.run()
	}
}

// unpark resumes a parked down direction: its socket was closed, so its
// run fails and ends the direction.
func (d *parkedDown) unpark() {
	if d.cancel() {
		go d.run()
	}
}
