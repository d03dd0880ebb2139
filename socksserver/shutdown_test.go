package socksserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestShutdownForceClosesOpenRelays: relays still open when the grace
// period ends are closed, Serve returns nil, and no goroutine is left.
func TestShutdownForceClosesOpenRelays(t *testing.T) {
	// Goroutines of tests that ran before are not this test's business.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echoLn.Close()
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // held open and silent
		}
	}()

	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), ln) }()

	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		noAuth(t, c)
		send(t, c, req5(1, echoLn.Addr().(*net.TCPAddr).AddrPort()))
		if rep, _ := readReply5(t, c); rep != 0 {
			t.Fatalf("reply %d", rep)
		}
		clients = append(clients, c)
	}
	// One more still in its handshake: closed at once by Shutdown.
	hs, err := net.DialTimeout("tcp", ln.Addr().String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	hs.SetDeadline(time.Now().Add(ioTimeout))
	for i := 0; i < 500 && s.Active() < 4; i++ {
		time.Sleep(10 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with open relays: %v, want the context's error", err)
	}
	if err := testenv.Recv(t, served, "Serve's return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
	for _, c := range append(clients, hs) {
		expectClosed(t, c)
	}
	if s.Active() != 0 {
		t.Errorf("%d connections left", s.Active())
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), ioTimeout); err == nil {
		t.Errorf("still accepting after Shutdown")
	}
	echoLn.Close()
	testenv.Recv(t, echoDone, "the echo server's end")
}

// TestShutdownLetsTransferFinish: a transfer in flight when Shutdown starts
// completes, new connections are refused meanwhile, and Shutdown returns
// nil once it has.
func TestShutdownLetsTransferFinish(t *testing.T) {
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	release := make(chan struct{})
	srcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srcLn.Close()
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		c, err := srcLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-release
		c.Write(payload)
	}()

	srv := startServer(t, Config{})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(1, srcLn.Addr().(*net.TCPAddr).AddrPort()))
	if rep, _ := readReply5(t, c); rep != 0 {
		t.Fatalf("reply %d", rep)
	}

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	// Wait until the listener is closed.
	select {
	case <-srv.lnClosed:
	case <-time.After(ioTimeout):
		t.Fatal("the listener still accepts during Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a relay was open", err)
	default:
	}
	close(release)
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("transfer during shutdown: %d of %d bytes, %v", len(got), len(payload), err)
	}
	c.Close()
	if err := testenv.Recv(t, shut, "Shutdown's return"); err != nil {
		t.Errorf("Shutdown: %v, want nil after the relay finished", err)
	}
	testenv.Recv(t, srcDone, "the source's end")
}

// TestServeContextCancel: cancelling Serve's context closes everything and
// Serve returns nil.
func TestServeContextCancel(t *testing.T) {
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	c := dial(t, ln.Addr().String())
	noAuth(t, c)
	send(t, c, req5(1, echo))
	if rep, _ := readReply5(t, c); rep != 0 {
		t.Fatalf("reply %d", rep)
	}
	// Read the echo's greeting while the relay is surely up: after cancel
	// it may or may not have crossed before the relay closed.
	readLine(t, c)
	cancel()
	if err := testenv.Recv(t, served, "Serve's return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
	expectClosed(t, c)
	if err := s.Serve(context.Background(), ln); err == nil {
		// Serving a closed listener fails at Accept.
		t.Errorf("Serve on a closed listener returned nil")
	}
}

func TestListenAndServeAfterShutdown(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown(context.Background())
	if err := s.ListenAndServe(context.Background(), "127.0.0.1:0"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("ListenAndServe after Shutdown: %v", err)
	}
}
