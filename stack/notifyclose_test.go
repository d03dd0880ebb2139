package stack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestSystemConnNotifyClose: a system-mode connection calls NotifyClose's
// function once, after Close, and at once when it is closed already; a
// gVisor-mode one has no need to (closing its endpoint notifies readers).
func TestSystemConnNotifyClose(t *testing.T) {
	s := &Stack{tcpConns: map[*tcpConn]struct{}{}, sys: &sysTCP{byApp: map[[2]netip.AddrPort]*natEntry{}, byFake: map[netip.AddrPort]*natEntry{}}}
	_, k := testenv.TCPPair(t)
	c := &tcpConn{Conn: k, s: s, kernel: k, nat: &natEntry{}}
	calls := 0
	c.NotifyClose(func() {
		if _, err := k.Write([]byte{1}); err == nil {
			t.Error("NotifyClose's function ran before the socket was closed")
		}
		calls++
	})
	if calls != 0 {
		t.Fatal("NotifyClose called its function on an open connection")
	}
	c.Close()
	c.Close()
	if calls != 1 {
		t.Fatalf("NotifyClose's function ran %d times after two Closes, want once", calls)
	}
	c.NotifyClose(func() { calls++ })
	if calls != 2 {
		t.Fatal("NotifyClose on a closed connection did not call its function at once")
	}
}

// TestSystemConnParkedRelayEndsOnClose: a relay between a system-mode
// connection and a kernel socket parks both directions on the Poller,
// and closing the connection (as Stack.Close and the router's stop do)
// ends it. Without the close notification the parked relay never ended.
func TestSystemConnParkedRelayEndsOnClose(t *testing.T) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no relay poller here: %v", err)
	}
	defer pl.Close()
	s := &Stack{tcpConns: map[*tcpConn]struct{}{}, sys: &sysTCP{byApp: map[[2]netip.AddrPort]*natEntry{}, byFake: map[netip.AddrPort]*natEntry{}}}
	app, k := testenv.TCPPair(t)
	up, remote := testenv.TCPPair(t)
	c := &tcpConn{Conn: k, s: s, kernel: k, nat: &natEntry{}}
	ended := make(chan error, 1)
	if !relay.StreamAsync(context.Background(), c, up, relay.StreamOptions{Poller: pl, ParkAfter: 10 * time.Millisecond},
		func(_, _ int64, err error) { ended <- err }) {
		t.Fatal("StreamAsync did not take a system-mode connection to a kernel socket")
	}
	app.Write([]byte("x"))
	remote.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(remote, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // parked by now (or not: it must end either way)
	c.Close()
	up.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the system-mode connection did not end its parked relay")
	}
}
