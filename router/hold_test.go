package router

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// holdCounter stands in for the fake-IP pool's Acquire and Release: every
// address in 198.18.0.0/15 is a fake IP of "example.com".
type holdCounter struct {
	mu   sync.Mutex
	held map[netip.Addr]int
	max  int // most holds at once
}

func (h *holdCounter) acquire(a netip.Addr) (string, bool) {
	if !netip.MustParsePrefix("198.18.0.0/15").Contains(a) {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		h.held = map[netip.Addr]int{}
	}
	h.held[a]++
	n := 0
	for _, c := range h.held {
		n += c
	}
	h.max = max(h.max, n)
	return "example.com", true
}

func (h *holdCounter) release(a netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held[a] == 0 {
		panic("release without acquire: " + a.String())
	}
	h.held[a]--
}

func (h *holdCounter) count(a netip.Addr) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held[a]
}

func holding(h *holdCounter) func(*Config) {
	return func(c *Config) {
		c.AcquireHost, c.ReleaseHost = h.acquire, h.release
		c.ReverseHost = func(a netip.Addr) (string, bool) {
			return "example.com", netip.MustParsePrefix("198.18.0.0/15").Contains(a)
		}
		// Long against the test's steps between datagrams: a loaded
		// machine must not expire the flow in the middle.
		c.UDPIdle = time.Second
	}
}

// TestTCPFlowHoldsItsFakeIP: a TCP flow to a fake IP holds the mapping
// while it is open and releases it when it ends.
func TestTCPFlowHoldsItsFakeIP(t *testing.T) {
	h := &holdCounter{}
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	r, flows := newRouter(t, Static(out), holding(h))
	fake := netip.MustParseAddr("198.18.0.9")
	req := newFakeReq("198.18.0.9:443")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(context.Background(), nil, req); close(done) }()
	testenv.Recv(t, req.accepted, "the app's connection accepted")
	if got := out.dialed; len(got) != 1 || got[0] != "example.com:443" {
		t.Fatalf("dialed %v", got)
	}
	if n := h.count(fake); n != 1 {
		t.Fatalf("an open flow holds %s %d times, want 1", fake, n)
	}
	appRemote.Close()
	upRemote.Close()
	io.Copy(io.Discard, upRemote)
	testenv.Recv(t, done, "the handler's return")
	testenv.Recv(t, flows, "the flow's record")
	if n := h.count(fake); n != 0 {
		t.Fatalf("%s still held %d times after the flow ended", fake, n)
	}
	// A flow to a real address holds nothing (its dial fails here).
	out.dial = func(string) (net.Conn, error) { return nil, net.ErrClosed }
	r.handleTCP(context.Background(), nil, newFakeReq("192.0.2.1:80"))
	testenv.Recv(t, flows, "the flow's record")
	if h.max != 1 {
		t.Errorf("at most %d holds at once, want 1", h.max)
	}
}

// TestUDPFlowHoldsItsFakeIPs: a UDP flow holds each fake IP it sends to
// once, however many datagrams, and releases them all when it ends.
func TestUDPFlowHoldsItsFakeIPs(t *testing.T) {
	h := &holdCounter{}
	pc := newRealPC(func(to socks.Addr) socks.Addr { return to })
	out := &fakeOutbound{name: "proxy", listen: func() (PacketConn, error) { return pc, nil }}
	r, flows := newRouter(t, Static(out), holding(h))
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	a, b := netip.MustParseAddrPort("198.18.0.9:53"), netip.MustParseAddrPort("198.18.0.10:443")
	for _, dst := range []netip.AddrPort{a, a, b, a, netip.MustParseAddrPort("192.0.2.7:53")} {
		f.in <- dgram{[]byte("q"), dst}
		testenv.Recv(t, pc.sent, "a datagram sent upstream")
		testenv.Recv(t, f.out, "a datagram to the app")
	}
	if h.count(a.Addr()) != 1 || h.count(b.Addr()) != 1 {
		t.Fatalf("held %d and %d times during the flow, want once each", h.count(a.Addr()), h.count(b.Addr()))
	}
	testenv.Recv(t, done, "the handler's return")
	testenv.Recv(t, flows, "the flow's record")
	if h.count(a.Addr()) != 0 || h.count(b.Addr()) != 0 {
		t.Fatalf("still held after the flow: %d, %d", h.count(a.Addr()), h.count(b.Addr()))
	}
}
