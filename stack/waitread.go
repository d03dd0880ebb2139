package stack

import (
	"net"
	"os"
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
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
} = (*tcpConn)(nil)
