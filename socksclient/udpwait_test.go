package socksclient

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// An association holds no read buffer of its own: the UDP flows tunsocks
// holds open each cost one, and a 64 KiB one per association was a third
// of a held flow's memory.
func TestUDPAssociationHoldsNoReadBuffer(t *testing.T) {
	s := newFakeUDPServer(t)
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	pc, err := c.ListenPacket(context.Background())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got := after.TotalAlloc - before.TotalAlloc; got >= 32<<10 {
		t.Errorf("ListenPacket allocated %d bytes, want less than 32 KiB (no datagram-sized buffer)", got)
	}
}

// WaitRead returns once a reply waits, without taking it: ReadFrom then
// gets it, into a buffer that holds any datagram (the header and payload
// read in place) or into a small one.
func TestUDPWaitReadThenRead(t *testing.T) {
	s := newFakeUDPServer(t)
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	pc, err := c.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// The server learns the client's address from a first datagram.
	if _, err := pc.WriteTo([]byte("hello"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 7}); err != nil {
		t.Fatal(err)
	}
	_, _, _, client := s.recv(t)

	waited := make(chan error, 1)
	go func() { waited <- pc.WaitRead() }()
	select {
	case err := <-waited:
		t.Fatalf("WaitRead returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	src := socks.Addr{IP: netip.MustParseAddr("198.51.100.2"), Port: 99}
	for _, p := range []string{"first reply", "second"} {
		d, _ := socks.AppendUDPHeader(nil, 0, src)
		if _, err := s.relay.WriteToUDP(append(d, p...), client); err != nil {
			t.Fatal(err)
		}
	}
	if err := testenv.Recv(t, waited, "WaitRead's return"); err != nil {
		t.Fatalf("WaitRead: %v", err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	big := make([]byte, 65535)
	n, from, err := pc.ReadFrom(big)
	if err != nil || string(big[:n]) != "first reply" || from.String() != "198.51.100.2:99" {
		t.Fatalf("ReadFrom(64 KiB) = %q from %v, %v; want \"first reply\" from 198.51.100.2:99", big[:n], from, err)
	}
	// The second is still there: WaitRead returns at once.
	if err := pc.WaitRead(); err != nil {
		t.Fatalf("WaitRead with a datagram waiting: %v", err)
	}
	small := make([]byte, 16)
	if n, _, err := pc.ReadFrom(small); err != nil || string(small[:n]) != "second" {
		t.Fatalf("ReadFrom(16) = %q, %v; want \"second\"", small[:n], err)
	}

	go func() { waited <- pc.WaitRead() }()
	time.Sleep(20 * time.Millisecond)
	pc.Close()
	if err := testenv.Recv(t, waited, "WaitRead's return"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WaitRead after Close: %v, want net.ErrClosed", err)
	}
}

// With a Poller the association's control connection is watched without a
// goroutine of its own, and its end still ends the association: a blocked
// read fails with "association ended". Close with the watch armed ends it
// too.
func TestUDPPolledWatch(t *testing.T) {
	p, s, pc := polledAssociation(t)
	if n := goroutinesIn("(*UDPConn).watch"); n != 0 {
		t.Errorf("%d goroutines watch the control connection, want 0 (the Poller does)", n)
	}
	readErr := make(chan error, 1)
	go func() {
		_, _, err := pc.ReadFrom(make([]byte, 100))
		readErr <- err
	}()
	ctrl := testenv.Recv(t, s.ctrl, "the control connection")
	// Stray bytes from the server are dropped; the watch goes on.
	ctrl.Write([]byte("stray"))
	select {
	case err := <-readErr:
		t.Fatalf("read ended after stray control bytes: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	ctrl.Close()
	if err := testenv.Recv(t, readErr, "the blocked read's end"); !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "association ended") {
		t.Errorf("read after the control connection closed: %v, want net.ErrClosed and 'association ended'", err)
	}
	if err := pc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	// A second association, closed by us while the watch is armed.
	s2 := newFakeUDPServer(t)
	c2, _ := Parse("socks5://"+s2.ln.Addr().String(), nil)
	pc2, err := c2.ListenPacketPolled(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	ctrl2 := testenv.Recv(t, s2.ctrl, "the control connection")
	defer ctrl2.Close()
	if err := pc2.Close(); err != nil {
		t.Errorf("Close with the watch armed: %v", err)
	}
	ctrl2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ctrl2.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("control connection after Close: %v, want EOF", err)
	}
}

// goroutinesIn counts the goroutines with fn on their stacks.
func goroutinesIn(fn string) int {
	return testenv.Goroutines(func(g string) bool { return strings.Contains(g, fn) })
}

// TryReadFrom takes a waiting reply without waiting (nothing: ok false),
// drops malformed datagrams on the way, and NotifyEnd says when the
// server ended the association (at once for a later call); reads fail
// then with "association ended".
func TestUDPTryReadFromAndNotifyEnd(t *testing.T) {
	_, s, pc := polledAssociation(t)
	if _, err := pc.WriteTo([]byte("hello"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 7}); err != nil {
		t.Fatal(err)
	}
	_, _, _, client := s.recv(t)
	buf := make([]byte, 65535)
	if n, _, ok, err := pc.TryReadFrom(buf); ok || err != nil || n != 0 {
		t.Fatalf("TryReadFrom with nothing waiting = %d, %v, %v", n, ok, err)
	}
	if _, _, _, err := pc.TryReadFrom(make([]byte, 100)); err == nil {
		t.Fatal("TryReadFrom into a buffer too small for a datagram did not fail")
	}
	src := socks.Addr{IP: netip.MustParseAddr("198.51.100.2"), Port: 99}
	reply := make([]byte, 3000)
	for i := range reply {
		reply[i] = byte(i * 31)
	}
	d, _ := socks.AppendUDPHeader(nil, 0, src)
	s.relay.WriteToUDP([]byte{0, 0}, client) // malformed: dropped
	if _, err := s.relay.WriteToUDP(append(d, reply...), client); err != nil {
		t.Fatal(err)
	}
	if err := pc.WaitRead(); err != nil {
		t.Fatal(err)
	}
	var n int
	var err error
	var from socks.Addr
	ok := false
	for range 1000 { // the malformed one first; the reply is queued behind it
		if n, from, ok, err = pc.TryReadFrom(buf); ok || err != nil {
			break
		}
		pc.WaitRead()
	}
	if !ok || err != nil || !bytes.Equal(buf[:n], reply) || from != src {
		t.Fatalf("TryReadFrom = %d bytes from %v, %v, %v; want the %d-byte reply from %v", n, from, ok, err, len(reply), src)
	}

	ended := make(chan struct{}, 2)
	pc.NotifyEnd(func() { ended <- struct{}{} })
	ctrl := testenv.Recv(t, s.ctrl, "the control connection")
	ctrl.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("NotifyEnd never called after the server closed the control connection")
	}
	if _, _, _, err := pc.TryReadFrom(buf); !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "association ended") {
		t.Fatalf("TryReadFrom after the end: %v, want net.ErrClosed and 'association ended'", err)
	}
	pc.NotifyEnd(func() { ended <- struct{}{} })
	select {
	case <-ended:
	default:
		t.Fatal("NotifyEnd after the end did not call back at once")
	}
}

// polledAssociation opens a UDP association with a fake SOCKS server
// whose control connection a new Poller watches; all are closed when
// the test ends.
func polledAssociation(t *testing.T) (*relay.Poller, *fakeUDPServer, *UDPConn) {
	t.Helper()
	s := newFakeUDPServer(t)
	p, err := relay.NewPoller()
	if err != nil {
		testenv.Unavailable(t, "relay poller: "+err.Error())
	}
	t.Cleanup(func() { p.Close() })
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	pc, err := c.ListenPacketPolled(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return p, s, pc
}
