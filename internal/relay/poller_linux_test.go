package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// tcpHidden is a TCP connection the relay does not see as one (so it
// neither splices it nor reads it through the kernel), as a netstack
// connection is; it keeps CloseWrite.
type tcpHidden struct{ *net.TCPConn }

// parkedStream runs Stream between app's peer (hidden) and remote's peer
// (a kernel socket) with a Poller, and returns the pair's b->a direction.
func parkedStream(t *testing.T, opts StreamOptions) (app, remote *net.TCPConn, h func() *polledHalf, done <-chan error, cancel func()) {
	app, remote, _, _, h, done, cancel = parkedStreamConns(t, opts)
	return
}

// parkedStreamConns is parkedStream that also returns the Stream's own
// connections a and b.
func parkedStreamConns(t *testing.T, opts StreamOptions) (app, remote, a, b *net.TCPConn, h func() *polledHalf, done <-chan error, cancel func()) {
	t.Helper()
	pl, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	app, a = testenv.TCPPair(t)
	b, remote = testenv.TCPPair(t)
	opts.Poller = pl
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	ended := make(chan struct{})
	started := make(chan *pair, 1)
	go func() {
		defer close(ended)
		// As Stream does, with the pair handed out for the test to look at.
		w := make(chan error, 1)
		s := startParking(ctx, tcpHidden{a}, b, &opts, func(_, _ int64, err error) { w <- err })
		if s == nil {
			started <- nil
			ch <- errors.New("startParking did not take a Poller stream")
			return
		}
		started <- &s.pair
		ch <- <-w
	}()
	p := testenv.Recv(t, started, "the parked stream's start")
	if p == nil {
		t.Fatal(testenv.Recv(t, ch, "why startParking refused"))
	}
	t.Cleanup(func() {
		cancel()
		testenv.Recv(t, ended, "the parked stream's return")
		if err := pl.Close(); err != nil {
			t.Error(err)
		}
	})
	return app, remote, a, b, func() *polledHalf { return p.parked }, ch, cancel
}

func (h *polledHalf) isParked() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.parkID != 0
}

// waitParked waits until the direction has parked on the Poller.
func waitParked(t *testing.T, h *polledHalf) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !h.isParked(); {
		if time.Now().After(deadline) {
			t.Fatal("the idle direction never parked on the Poller")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func echoOnce(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil || string(got) != msg {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}

func TestStreamParksIdleUpstreamAndWakes(t *testing.T) {
	app, remote, h, done, _ := parkedStream(t, StreamOptions{ParkAfter: 50 * time.Millisecond})
	echoOnce(t, remote, app, "before")
	waitParked(t, h())
	// Bytes from upstream wake the parked direction, in order, several
	// times over.
	for _, msg := range []string{"one", "two", "three"} {
		echoOnce(t, remote, app, msg)
		echoOnce(t, app, remote, msg+"-up")
		waitParked(t, h())
	}
	// The upstream's FIN also wakes it and is passed on.
	remote.CloseWrite()
	app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("app read after upstream FIN = %d, %v; want EOF", n, err)
	}
	app.CloseWrite()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Stream = %v", err)
		}
	case <-time.After(testenv.Patience):
		t.Fatal("Stream did not end after both FINs")
	}
}

func TestStreamParkedEndsOnCancelAndIdle(t *testing.T) {
	_, _, h, done, cancel := parkedStream(t, StreamOptions{ParkAfter: 20 * time.Millisecond})
	waitParked(t, h())
	cancel()
	select {
	case <-done:
	case <-time.After(testenv.Patience):
		t.Fatal("cancel did not end a Stream whose direction was parked")
	}

	_, _, h2, done2, _ := parkedStream(t, StreamOptions{ParkAfter: 20 * time.Millisecond, Idle: 200 * time.Millisecond})
	waitParked(t, h2())
	select {
	case err := <-done2:
		if !errors.Is(err, ErrIdle) {
			t.Fatalf("Stream = %v, want ErrIdle", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an idle parked Stream was never reaped")
	}
}

func TestPollerCloseWakesParked(t *testing.T) {
	pl, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	app, a := testenv.TCPPair(t)
	b, remote := testenv.TCPPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Stream(context.Background(), tcpHidden{a}, b, StreamOptions{Poller: pl, ParkAfter: 20 * time.Millisecond})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // parked by now, or still reading: both must work
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	// Woken by Close, the direction reads on its goroutine again.
	echoOnce(t, remote, app, "after close")
	app.Close()
	remote.Close()
	select {
	case <-done:
	case <-time.After(testenv.Patience):
		t.Fatal("Stream did not end")
	}
}

// TestStreamParkedEndsWhenCallerCloses: the router's CloseFlow closes the
// Stream's connections itself (a reset toward the app, a close of the
// upstream). A direction parked on the Poller gets no event from its own
// socket being closed; the other direction's end must resume it. Before,
// such a Stream stayed open until its idle timer.
func TestStreamParkedEndsWhenCallerCloses(t *testing.T) {
	for _, order := range []string{"a first", "b first"} {
		t.Run(order, func(t *testing.T) {
			_, _, a, b, h, done, _ := parkedStreamConns(t, StreamOptions{ParkAfter: 20 * time.Millisecond})
			waitParked(t, h())
			if order == "a first" {
				a.Close()
				b.Close()
			} else {
				b.Close()
				time.Sleep(50 * time.Millisecond)
				a.Close()
			}
			select {
			case <-done:
			case <-time.After(testenv.Patience):
				t.Fatal("closing both connections did not end a Stream whose direction was parked")
			}
		})
	}
}
