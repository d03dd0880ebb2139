package stack_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
)

// TestTCPWaitRead: a netstack connection waits for the app's bytes without
// a buffer (relay.ReadWaiter): WaitRead blocks while nothing is there,
// returns once bytes arrive (and Read then takes them at once), gives up
// at the read deadline as Read would, wakes when the deadline is moved
// into the past, and returns for the app's FIN.
func TestTCPWaitRead(t *testing.T) {
	app, c := acceptedConn(t)
	w, ok := c.(interface{ WaitRead() error })
	if !ok {
		t.Fatalf("%T has no WaitRead", c)
	}

	waited := make(chan error, 1)
	go func() { waited <- w.WaitRead() }()
	select {
	case err := <-waited:
		t.Fatalf("WaitRead returned %v with nothing to read", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := app.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WaitRead after the app's byte: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitRead did not return after the app wrote")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // Read must not block now
	if n, err := c.Read(make([]byte, 4)); n != 1 || err != nil {
		t.Fatalf("Read after WaitRead = %d, %v", n, err)
	}

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := w.WaitRead(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitRead past the deadline = %v, want os.ErrDeadlineExceeded", err)
	}

	c.SetReadDeadline(time.Time{})
	go func() { waited <- w.WaitRead() }()
	time.Sleep(50 * time.Millisecond)
	c.SetReadDeadline(time.Unix(1, 0))
	select {
	case err := <-waited:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("WaitRead after the deadline moved into the past = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("moving the deadline into the past did not wake WaitRead")
	}

	c.SetReadDeadline(time.Time{})
	go func() { waited <- w.WaitRead() }()
	app.CloseWrite()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WaitRead after the app's FIN: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitRead did not return after the app's FIN")
	}
	if _, err := c.Read(make([]byte, 4)); err != io.EOF {
		t.Fatalf("Read after the FIN = %v, want io.EOF", err)
	}
}

// acceptedConn dials one connection from the app through a fresh stack
// and returns both ends: the app's, and the netstack connection the
// handler accepted; both are closed when the test ends.
func acceptedConn(t *testing.T) (stacktest.Conn, stack.Conn) {
	t.Helper()
	conns := make(chan stack.Conn, 1)
	e := setup(t, handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		conns <- c
		<-ctx.Done()
	}}, nil)
	app, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	c := testenv.Recv(t, conns, "the accepted connection")
	t.Cleanup(func() { c.Close() })
	return app, c
}
