package stack

import (
	"net"
	"os"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/waiter"
)

// WaitRead returns once a Read would not block: the app's bytes, its FIN
// or an error are waiting, or the connection was closed. It holds no
// buffer while it waits, so a relay of an idle connection holds none
// (relay.ReadWaiter). When the read deadline passes first it returns an
// error wrapping os.ErrDeadlineExceeded, as Read would. One goroutine at a
// time may call it (the connection's reader). In system TCP mode it
// returns at once (the relay splices on the kernel socket there).
func (c *tcpConn) WaitRead() error {
	if c.ep == nil || c.ep.Readiness(waiter.ReadableEvents) != 0 {
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

// NotifyRead calls fn once, when a Read would not block (the app's bytes,
// its FIN or an error are waiting, or the connection was closed), at once
// if that is so already: from the goroutine that made it readable, so fn
// must not block. A relay direction parks on it instead of a goroutine
// (relay.ReadNotifier). A later call replaces the earlier registration.
// In system TCP mode it calls fn at once.
func (c *tcpConn) NotifyRead(fn func()) {
	if c.ep == nil {
		fn()
		return
	}
	var fired atomic.Bool
	once := func(waiter.EventMask) {
		if fired.CompareAndSwap(false, true) {
			fn()
		}
	}
	e := waiter.NewFunctionEntry(waiter.ReadableEvents, once)
	c.nmu.Lock()
	if c.notify != nil {
		c.wq.EventUnregister(c.notify)
	}
	c.notify = &e
	c.wq.EventRegister(&e)
	c.nmu.Unlock()
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		once(waiter.ReadableEvents)
	}
}

// SetDeadline and SetReadDeadline also wake a WaitRead, which looks at the
// new deadline.
func (c *tcpConn) SetDeadline(t time.Time) error {
	err := c.Conn.SetDeadline(t)
	c.setReadDeadline(t)
	return err
}

func (c *tcpConn) SetReadDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	c.setReadDeadline(t)
	return err
}

func (c *tcpConn) setReadDeadline(t time.Time) {
	if c.wq == nil {
		return
	}
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	if c.readDeadline.Swap(d) != d {
		c.wq.Notify(waiter.ReadableEvents)
	}
}

var _ interface {
	WaitRead() error
	NotifyRead(func())
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
} = (*tcpConn)(nil)
