package stack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/tunsocks/tunsocks/stack"
)

// stackACKs counts, among the packets the tap recorded, the stack's TCP
// packets from port: pure ACKs (no payload, no SYN/FIN/RST) and segments
// with a payload.
func stackACKs(tap *recordTap, port layers.TCPPort) (pure, data int) {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for _, p := range tap.pkts {
		pkt := gopacket.NewPacket(p, layers.LayerTypeIPv4, gopacket.Default)
		tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok || tcp.SrcPort != port {
			continue
		}
		switch {
		case len(tcp.Payload) > 0:
			data++
		case tcp.ACK && !tcp.SYN && !tcp.FIN && !tcp.RST:
			pure++
		}
	}
	return pure, data
}

// roundTrips makes n 1-byte request/response exchanges through the
// stack's echo handler, on one connection to port.
func roundTrips(t *testing.T, e *env, port uint16, n int) {
	t.Helper()
	c, err := e.app.DialTCP(e.ctx, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	b := make([]byte, 1)
	for i := range n {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("round trip %d: got %v, %v", i, b, err)
		}
	}
}

// TestRoundTripWritesNoLoneACK: with the ACK delay, a 1-byte request
// answered within it costs the stack one packet, the reply, which carries
// the acknowledgement; without it, each request was acknowledged by a
// lone ACK first (gVisor's TCP never delays one). The delay here is long
// so that a slow test machine still answers within it.
func TestRoundTripWritesNoLoneACK(t *testing.T) {
	const n = 20
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"delayed", 20 * time.Second}, {"off", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			tap := &recordTap{}
			e := setup(t, echoHandler(t, nil), func(c *stack.Config) {
				c.Tap = tap
				c.TCP.AckDelay = tc.delay
			})
			roundTrips(t, e, 7, n)
			pure, data := stackACKs(tap, 7)
			if data < n {
				t.Fatalf("the stack sent %d segments with data, want >= %d replies", data, n)
			}
			if tc.delay > 0 && pure != 0 {
				t.Errorf("the stack sent %d lone ACKs during %d round trips, want 0: the replies carry the acknowledgements", pure, n)
			}
			if tc.delay < 0 && pure < n {
				t.Errorf("without the delay the stack sent %d lone ACKs during %d round trips, want one per request", pure, n)
			}
		})
	}
}

// TestDelayedACKGoesOutWithoutReply: a request nobody answers is still
// acknowledged, once the delay is over.
func TestDelayedACKGoesOutWithoutReply(t *testing.T) {
	tap := &recordTap{}
	got := make(chan []byte, 1)
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err == nil {
			got <- b
		}
		<-ctx.Done() // never answers
	}}
	e := setup(t, h, func(c *stack.Config) {
		c.Tap = tap
		c.TCP.AckDelay = 50 * time.Millisecond
	})
	c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(time.Minute):
		t.Fatal("the handler never read the request")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if pure, _ := stackACKs(tap, 9); pure == 1 {
			break
		} else if pure > 1 {
			t.Fatalf("the stack sent %d lone ACKs for one request, want 1", pure)
		}
		if time.Now().After(deadline) {
			t.Fatal("the request was never acknowledged")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNagleAppStallsOnce: an app with Nagle's algorithm that sends a
// request in two small writes waits for the ACK of the first before it
// sends the second, and a server that answers whole requests waits for
// the second: the held ACK's delay passes before anything moves. After
// that first stall the flow's ACKs go out at once, so the app does not
// stall on every request (it did, one delay each, before flows turned
// slow).
func TestNagleAppStallsOnce(t *testing.T) {
	const n = 20
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 2)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}}
	tap := &recordTap{}
	e := setup(t, h, func(c *stack.Config) {
		c.Tap = tap
		c.TCP.AckDelay = 50 * time.Millisecond
	})
	if err := e.app.SetNagle(true); err != nil {
		t.Fatal(err)
	}
	c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	b := make([]byte, 2)
	for i := range n {
		for j := range 2 {
			if _, err := c.Write([]byte{byte(i + j)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) || b[1] != byte(i+1) {
			t.Fatalf("exchange %d: got %v, %v", i, b, err)
		}
	}
	st := e.s.Stats()
	if st.ACKsDelayed > 2 {
		t.Errorf("%d ACKs delayed in %d two-write requests from a Nagle app, want at most 2: each made the app wait", st.ACKsDelayed, n)
	}
	if pure, _ := stackACKs(tap, 7); pure < n {
		t.Errorf("the stack sent %d lone ACKs, want >= %d: the first write of each request is acknowledged at once", pure, n)
	}
}
