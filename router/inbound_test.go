package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// seen records the metadata every decision was asked for.
type seen struct {
	mu sync.Mutex
	ms []rules.Metadata
}

func (s *seen) decide(m *rules.Metadata) Decision {
	s.mu.Lock()
	s.ms = append(s.ms, *m)
	s.mu.Unlock()
	return Decision{Action: Reject, Rule: "MATCH,REJECT"}
}

func (s *seen) all() []rules.Metadata {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]rules.Metadata(nil), s.ms...)
}

// TestHandlerTagsFlowsWithInbound: flows a stack hands to r.Handler(in)
// carry in's type and name, and the user in.User names for the flow's
// source, into the rules' metadata and the flow record; flows handed to
// the Router itself carry none.
func TestHandlerTagsFlowsWithInbound(t *testing.T) {
	var s seen
	r, flows := newRouter(t, s.decide, nil)
	var users sync.Map // source address asked for -> struct{}
	in := Inbound{Type: rules.InWireGuard, Name: "wg", User: func(src netip.Addr) string {
		users.Store(src, struct{}{})
		if src == netip.MustParseAddr("10.0.0.2") {
			return "pixel"
		}
		return ""
	}}
	// A TUN that also carries a gateway's forwarded flows: sources on the
	// LAN 192.168.50.0/24 are tagged as the gateway's, others stay the TUN's.
	gw := Inbound{Type: rules.InTUN, Name: "tsk0", Classify: func(src netip.Addr) (string, string) {
		if netip.MustParsePrefix("192.168.50.0/24").Contains(src) {
			return rules.InGateway, "lan0"
		}
		return "", ""
	}}
	for _, tc := range []struct {
		name    string
		h       stack.Handler
		in      flowIn
		appAddr netip.Prefix
	}{
		{"tagged", r.Handler(in), flowIn{"wireguard", "wg", "pixel"}, netip.MustParsePrefix("10.0.0.2/24")},
		{"tagged other peer", r.Handler(in), flowIn{"wireguard", "wg", ""}, netip.MustParsePrefix("10.0.0.3/24")},
		{"untagged", r, flowIn{}, netip.MustParsePrefix("10.0.0.2/24")},
		{"forwarded by a gateway", r.Handler(gw), flowIn{"gateway", "lan0", ""}, netip.MustParsePrefix("192.168.50.7/24")},
		{"the host's own through the gateway's TUN", r.Handler(gw), flowIn{"tun", "tsk0", ""}, netip.MustParsePrefix("198.18.0.1/15")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.mu.Lock()
			s.ms = nil
			s.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dev, peer := tuntest.NewPipe(1500)
			st, err := stack.New(ctx, stack.Config{Device: dev, Handler: tc.h})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			app, err := stacktest.NewApp(peer, tc.appAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()

			_, err = app.DialTCP(ctx, netip.MustParseAddrPort("192.0.2.1:80"))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial through a REJECT rule: %v, want connection refused", err)
			}
			pc, err := app.ListenUDP(netip.AddrPortFrom(tc.appAddr.Addr(), 0))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			if _, err := pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:7"))); err != nil {
				t.Fatal(err)
			}
			// The two records come in either order: the refused TCP
			// flow's can end after the UDP flow's.
			recs := map[string]FlowRecord{}
			for range 2 {
				select {
				case rec := <-flows:
					recs[rec.Network] = rec
				case <-ctx.Done():
					t.Fatalf("flow records: got %v, want one tcp and one udp", recs)
				}
			}
			for _, network := range []string{"tcp", "udp"} {
				rec, ok := recs[network]
				if !ok {
					t.Errorf("no %s flow record among %+v", network, recs)
					continue
				}
				if (flowIn{rec.InType, rec.InName, rec.InUser}) != tc.in {
					t.Errorf("%s flow record %+v, want inbound %+v", network, rec, tc.in)
				}
			}
			ms := s.all()
			if len(ms) != 2 {
				t.Fatalf("%d decisions, want 2 (tcp, udp)", len(ms))
			}
			for _, m := range ms {
				if (flowIn{m.InType, m.InName, m.InUser}) != tc.in {
					t.Errorf("%s metadata %+v, want inbound %+v", m.Network, m, tc.in)
				}
			}
		})
	}
	if _, ok := users.Load(netip.MustParseAddr("10.0.0.3")); !ok {
		t.Error("Inbound.User was not asked about the second peer's address")
	}
}
