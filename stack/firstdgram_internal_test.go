package stack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

type firstReader chan string

func (h firstReader) HandleTCP(_ context.Context, r *TCPRequest) { r.Reject() }

func (h firstReader) HandleUDP(_ context.Context, f *UDPFlow) {
	defer f.Close()
	buf := make([]byte, 16)
	n, _, ok, err := f.TryReadFrom(buf)
	if !ok || err != nil {
		h <- "nothing queued"
		return
	}
	h <- string(buf[:n])
}

// A new flow's Handler finds the datagram that opened the flow already
// queued, so a Handler that reads without waiting (TryReadFrom) gets it.
// The Handler was once started before that datagram was queued, and now
// and then read nothing (a CI failure of TestUDPNotifyReadAndDetach); the
// hook widens that window (Stack.flowOpened) to make it certain.
func TestUDPFirstDatagramQueuedBeforeHandler(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(firstReader, 1)
	dev, peer := tuntest.NewPipe(1500)
	s, err := New(ctx, Config{Device: dev, Handler: got})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.udpMu.Lock()
	s.flowOpened = func() { time.Sleep(20 * time.Millisecond) }
	s.udpMu.Unlock()
	app, err := stacktest.NewApp(peer, netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64"))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	pc, err := app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5006"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := netip.MustParseAddrPort("198.18.0.10:5006")
	if _, err := pc.WriteTo([]byte("first"), net.UDPAddrFromAddrPort(dst)); err != nil {
		t.Fatal(err)
	}
	if read := testenv.Recv(t, got, "the new flow's Handler"); read != "first" {
		t.Fatalf("the new flow's Handler read %q; want the datagram that opened the flow", read)
	}
}
