package stack_test

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/tunsocks/tunsocks/stack"
)

// TestConnConformance runs golang.org/x/net/nettest's net.Conn suite
// (basic I/O, ping-pong, racy reads and writes, every deadline case,
// concurrent methods, close) on the connection the stack hands to its
// Handler, with an app stack's connection as the other end. The router
// relays through this net.Conn, so its deadline and close semantics are
// what the relay's idle timer and shutdown rely on.
// It runs over a plain device and over one with GSO.
func TestConnConformance(t *testing.T) {
	t.Run("plain", func(t *testing.T) { connConformance(t, nil) })
	t.Run("gso", func(t *testing.T) { connConformance(t, withGSO(false)) })
}

func connConformance(t *testing.T, tweak func(*stack.Config)) {
	conns := make(chan stack.Conn)
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		select {
		case conns <- c:
		case <-ctx.Done():
			c.Close()
		}
	}}
	e := setup(t, h, tweak)
	dst := netip.MustParseAddrPort("198.18.0.1:9")
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		app, err := e.app.DialTCP(e.ctx, dst)
		if err != nil {
			return nil, nil, nil, err
		}
		var ours stack.Conn
		select {
		case ours = <-conns:
		case <-e.ctx.Done():
			app.Close()
			return nil, nil, nil, e.ctx.Err()
		}
		// c1 is the side under test in nettest's asymmetric cases.
		return ours, app, func() { ours.Close(); app.Close() }, nil
	})
}
