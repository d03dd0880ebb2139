package router

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// tcpFlow starts a relayed TCP flow through r and returns the app's and
// the destination's ends and a channel closed when handleTCP returns.
func tcpFlow(t *testing.T, r *Router, out *fakeOutbound) (app, remote *net.TCPConn, done chan struct{}) {
	t.Helper()
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	out.dial = func(string) (net.Conn, error) { return upLocal, nil }
	req := newFakeReq("192.0.2.1:80")
	req.app = appLocal
	done = make(chan struct{})
	go func() { r.handleTCP(context.Background(), nil, req); close(done) }()
	testenv.Recv(t, req.accepted, "the app's connection accepted")
	return appRemote, upRemote, done
}

// liveFlows are the relayed flows of r's table.
func liveFlows(r *Router) []*liveFlow {
	var out []*liveFlow
	for _, e := range r.table.entries() {
		if lf := e.live.Load(); lf != nil {
			out = append(out, lf)
		}
	}
	return out
}

// TestShedIdle: the flows idle the longest are closed first, TCP and UDP,
// and their records say they were shed.
func TestShedIdle(t *testing.T) {
	out := &fakeOutbound{name: "up"}
	pc := newRealPC(func(to socks.Addr) socks.Addr { return to })
	out.listen = func() (PacketConn, error) { return pc, nil }
	r, flows := newRouter(t, Static(out), func(c *Config) { c.UDPIdle = time.Minute })

	oldApp, oldRemote, oldDone := tcpFlow(t, r, out)
	var oldLF *liveFlow
	for i := 0; i < 500 && oldLF == nil; i++ {
		for _, lf := range liveFlows(r) {
			oldLF = lf
		}
		time.Sleep(time.Millisecond)
	}
	f := newFakeFlow() // the UDP flow is the second oldest
	udpDone := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(udpDone) }()
	f.in <- dgram{[]byte("q"), netip.MustParseAddrPort("192.0.2.7:9")}
	testenv.Recv(t, pc.sent, "a datagram sent upstream")
	testenv.Recv(t, f.out, "a datagram to the app")
	time.Sleep(20 * time.Millisecond)
	newApp, newRemote, newDone := tcpFlow(t, r, out)
	// Activity on the first TCP flow makes it the most recent.
	time.Sleep(20 * time.Millisecond)
	oldApp.Write([]byte("x"))
	if _, err := io.ReadFull(oldRemote, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// The relay's clock follows the byte (when its splice returns).
	newest := func() bool {
		for _, lf := range liveFlows(r) {
			if lf != oldLF && lf.clock.Load() >= oldLF.clock.Load() {
				return false
			}
		}
		return true
	}
	for i := 0; i < 1000 && !newest(); i++ {
		time.Sleep(5 * time.Millisecond)
	}

	if n := r.ShedIdle(0.34); n != 1 {
		t.Fatalf("ShedIdle(0.34) of 3 closed %d", n)
	}
	testenv.Recv(t, udpDone, "the UDP handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Network != "udp" || !errors.Is(rec.Err, ErrShed) {
		t.Fatalf("first shed: %+v, want the UDP flow, shed", rec)
	}
	if n := r.ShedIdle(0.1); n != 1 { // at least one
		t.Fatalf("ShedIdle(0.1) of 2 closed %d", n)
	}
	testenv.Recv(t, newDone, "the new TCP flow's handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Network != "tcp" || rec.Dst.String() != "192.0.2.1:80" || !errors.Is(rec.Err, ErrShed) {
		t.Fatalf("second shed: %+v", rec)
	}
	io.ReadAll(newApp)
	newRemote.Close()
	select {
	case <-oldDone:
		t.Fatal("the active flow was shed")
	default:
	}
	if got := r.Stats().Shed.Load(); got != 2 {
		t.Errorf("Stats.Shed = %d", got)
	}
	oldApp.Close()
	oldRemote.Close()
	testenv.Recv(t, oldDone, "the old TCP flow's handler's return")
	testenv.Recv(t, flows, "the flow's record")
	if n := r.ShedIdle(1); n != 0 {
		t.Errorf("ShedIdle with no flow closed %d", n)
	}
}

// TestAdmitRefuses: with Admit saying no, a TCP flow gets a RST before any
// dial and a UDP flow is closed, and both are counted.
func TestAdmitRefuses(t *testing.T) {
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { t.Error("dialed a refused flow"); return nil, net.ErrClosed }}
	r, _ := newRouter(t, Static(out), func(c *Config) { c.Admit = func() bool { return false } })
	req := newFakeReq("192.0.2.1:80")
	r.handleTCP(context.Background(), nil, req)
	select {
	case <-req.rejected:
	default:
		t.Fatal("a refused TCP flow was not reset")
	}
	f := newFakeFlow()
	r.handleUDP(context.Background(), nil, f)
	select {
	case <-f.closed:
	default:
		t.Fatal("a refused UDP flow was not closed")
	}
	if n := r.Stats().Refused.Load(); n != 2 {
		t.Errorf("Stats.Refused = %d, want 2", n)
	}
}
