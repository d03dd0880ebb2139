package stack

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// countingHandler rejects every flow and counts the TCP ones.
type countingHandler struct{ tcp atomic.Int64 }

func (h *countingHandler) HandleTCP(_ context.Context, r *TCPRequest) { h.tcp.Add(1); r.Reject() }
func (h *countingHandler) HandleUDP(_ context.Context, f *UDPFlow)    { f.Close() }

// TestNewWithPacketsWaiting: packets already queued on the device when the
// stack starts (a TUN made and brought up before, as exec's sandbox does,
// gets the app's first SYNs and the kernel's IPv6 solicitations at once)
// reach the handlers. The stack used to attach the device before setting
// its protocol handlers: the first packets raced with that (go test -race
// flagged it) and a SYN could be answered with a RST instead of reaching
// the Handler.
func TestNewWithPacketsWaiting(t *testing.T) {
	dev, peer := tuntest.NewPipe(1500)
	src := netip.MustParseAddrPort("198.18.0.1:40000")
	for i := range 20 {
		dst := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i))
		if err := peer.Inject(tcpSeg(t, src, dst, 1, 0, true, false, false, false, "")); err != nil {
			t.Fatal(err)
		}
	}
	h := &countingHandler{}
	s, err := New(t.Context(), Config{Device: dev, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 200 {
		if h.tcp.Load() == 20 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("the handler saw %d of the 20 SYNs queued before the stack started", h.tcp.Load())
}
