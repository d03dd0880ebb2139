package relay

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Poller wakes relay directions that wait for a kernel socket to become
// readable, without a goroutine each: one goroutine of its own waits on
// an epoll instance for all of them. A Stream given one (StreamOptions.Poller)
// parks the direction that reads the upstream socket there once it has
// had nothing to read for StreamOptions.ParkAfter, so an idle connection
// costs no goroutine (and no goroutine stack) for that direction.
//
// The runtime's own poller keeps watching the socket too; the Poller's
// registration is one-shot and level-triggered, so bytes that arrived
// while the direction was parking wake it at once.
type Poller struct {
	epfd, evfd int
	done       chan struct{}
	closeOnce  sync.Once
	closeErr   error

	mu     sync.Mutex
	closed bool
	next   uint64
	fns    map[uint64]func(uint64) // registrations waiting, by id

	// workers run notified directions (see workers).
	workers workers
}

// pollerWakeID is the eventfd's id in the epoll set (registrations start
// at 1).
const pollerWakeID = 0

// NewPoller starts a Poller. Close it when done.
func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("relay: poller: %w", &osError{"epoll_create1", err})
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: poller: %w", &osError{"eventfd", err})
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEventID(&ev, pollerWakeID)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: poller: %w", &osError{"epoll_ctl", err})
	}
	p := &Poller{epfd: epfd, evfd: evfd, done: make(chan struct{}), fns: make(map[uint64]func(uint64)), workers: newWorkers()}
	go p.loop()
	return p, nil
}

// osError names the system call that failed.
type osError struct {
	call string
	err  error
}

func (e *osError) Error() string { return e.call + ": " + e.err.Error() }
func (e *osError) Unwrap() error { return e.err }

func setEventID(ev *unix.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func eventID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// errPollerClosed is wait's error once the Poller is closed.
var errPollerClosed = errors.New("relay: poller closed")

// wait registers fn to be called once with the registration's id, from
// the Poller's goroutine, when the socket behind rc is readable (bytes,
// its end, an error), maybe before wait returns; fn must not block. It
// returns the id for cancel.
func (p *Poller) wait(rc syscall.RawConn, fn func(id uint64)) (uint64, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, errPollerClosed
	}
	p.next++
	id := p.next
	p.fns[id] = fn
	p.mu.Unlock()
	var cerr error
	// Control holds the descriptor open while it runs: the registration
	// is never made for a descriptor number already reused.
	err := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setEventID(&ev, id)
		// A socket parked before keeps its (fired, disabled) one-shot
		// registration: re-arm it; a new one is added.
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		if cerr == unix.ENOENT {
			cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil && cerr != nil {
		err = &osError{"epoll_ctl", cerr}
	}
	if err != nil {
		p.mu.Lock()
		delete(p.fns, id)
		p.mu.Unlock()
		return 0, err
	}
	return id, nil
}

// Watch calls fn once, from the Poller's goroutine, when the socket behind
// rc is readable (bytes, its end, an error), or when the Poller closes;
// fn must not block. stop drops the registration (fn may still run if the
// Poller took it already: the caller tells by its own state). A socket
// closed while watched leaves the epoll set and fn is not called for it:
// stop the watch then. For sockets nobody reads while idle, such as a
// control connection that only ever ends, in place of a goroutine each.
func (p *Poller) Watch(rc syscall.RawConn, fn func()) (stop func(), err error) {
	id, err := p.wait(rc, func(uint64) { fn() })
	if err != nil {
		return nil, err
	}
	return func() { p.cancel(rc, id) }, nil
}

// cancel drops registration id of the socket behind rc: fn will not be
// called for it (unless the Poller's goroutine took it already; the
// caller tells by its own state). A socket already closed left the epoll
// set with its last descriptor.
func (p *Poller) cancel(rc syscall.RawConn, id uint64) {
	p.mu.Lock()
	delete(p.fns, id)
	p.mu.Unlock()
	_ = rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// loop waits for readiness and calls the registrations' functions.
func (p *Poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not expected; wake everyone so no direction stays parked.
			p.shut()
			return
		}
		for i := range events[:n] {
			id := eventID(&events[i])
			if id == pollerWakeID {
				p.mu.Lock()
				closed := p.closed
				p.mu.Unlock()
				if closed {
					p.shut()
					return
				}
				continue
			}
			p.mu.Lock()
			fn := p.fns[id]
			delete(p.fns, id)
			p.mu.Unlock()
			if fn != nil {
				fn(id)
			}
		}
	}
}

// shut marks p closed and calls every waiting function: those directions
// go back to reading on a goroutine.
func (p *Poller) shut() {
	p.mu.Lock()
	p.closed = true
	fns := p.fns
	p.fns = make(map[uint64]func(uint64))
	p.mu.Unlock()
	for id, fn := range fns {
		fn(id)
	}
}

// runNotified runs a notified direction on one of the Poller's workers;
// false when none can take it.
func (p *Poller) runNotified(h *notifiedHalf) bool { return p.workers.run(h) }

// Close stops the Poller. Directions parked on it are woken and go on
// reading on a goroutine of their own; Streams given it later do not park.
// Its workers return once the direction they run, if any, has parked or
// ended.
func (p *Poller) Close() error {
	p.closeOnce.Do(func() {
		p.workers.stop()
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		one := [8]byte{1, 1, 1, 1, 1, 1, 1, 1} // any non-zero count wakes the loop
		if _, err := unix.Write(p.evfd, one[:]); err != nil && err != unix.EAGAIN {
			// The loop cannot be woken; its descriptors stay open.
			p.closeErr = fmt.Errorf("relay: poller: %w", &osError{"write eventfd", err})
			return
		}
		<-p.done
		unix.Close(p.epfd)
		unix.Close(p.evfd)
	})
	return p.closeErr
}
