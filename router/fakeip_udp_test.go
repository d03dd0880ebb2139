package router

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// realPC stands in for a SOCKS association: every datagram is answered
// with "re:"+payload from the source reply names (the real address a name
// resolved to on the server's side, the name itself, or the address sent to).
type realPC struct {
	reply   func(to socks.Addr) socks.Addr
	sent    chan string
	replies chan realReply
	closed  chan struct{}
	once    sync.Once
}

type realReply struct {
	b    []byte
	from socks.Addr
}

func newRealPC(reply func(to socks.Addr) socks.Addr) *realPC {
	return &realPC{reply: reply, sent: make(chan string, 8), replies: make(chan realReply, 8), closed: make(chan struct{})}
}

func (p *realPC) Send(b []byte, to socks.Addr) error {
	p.sent <- to.String()
	p.replies <- realReply{append([]byte("re:"), b...), p.reply(to)}
	return nil
}

func (p *realPC) Recv(b []byte) (int, socks.Addr, error) {
	select {
	case d := <-p.replies:
		return copy(b, d.b), d.from, nil
	case <-p.closed:
		return 0, socks.Addr{}, net.ErrClosed
	}
}

func (p *realPC) Close() error { p.once.Do(func() { close(p.closed) }); return nil }

// TestUDPReplyToFakeIPComesFromFakeIP: the app sent to the fake IP of a
// proxied name; the upstream reports the reply's source as the real address
// it resolved the name to, or as the name. Either way the app must see the
// reply come from the fake IP and port it sent to, or a connected socket (a
// DNS client, QUIC) never takes it. Replies to datagrams the app sent to a
// real address keep their source.
func TestUDPReplyToFakeIPComesFromFakeIP(t *testing.T) {
	real := netip.MustParseAddr("93.184.216.34")
	for _, tc := range []struct {
		name  string
		reply func(to socks.Addr) socks.Addr
	}{
		{"from the resolved address", func(to socks.Addr) socks.Addr {
			if to.Name != "" {
				return socks.Addr{IP: real, Port: to.Port}
			}
			return to
		}},
		{"from the name", func(to socks.Addr) socks.Addr { return to }},
		{"from the name in capitals", func(to socks.Addr) socks.Addr {
			if to.Name != "" {
				return socks.Addr{Name: "EXAMPLE.com.", Port: to.Port}
			}
			return to
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := newRealPC(tc.reply)
			out := &fakeOutbound{name: "proxy", listen: func() (PacketConn, error) { return pc, nil }}
			fake := netip.MustParseAddrPort("198.18.0.9:53")
			direct := netip.MustParseAddrPort("192.0.2.7:53")
			r, flows := newRouter(t, Static(out), func(c *Config) {
				c.ReverseHost = func(a netip.Addr) (string, bool) { return "example.com", a == fake.Addr() }
				c.UDPIdle = time.Second // long against the test's steps
			})
			f := newFakeFlow()
			done := make(chan struct{})
			go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
			for _, dst := range []netip.AddrPort{fake, direct} {
				f.in <- dgram{[]byte("q"), dst}
				want := dst.String()
				if dst == fake {
					want = "example.com:53"
				}
				if a := testenv.Recv(t, pc.sent, "a datagram sent upstream"); a != want {
					t.Fatalf("sent to %s, want %s", a, want)
				}
				if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "re:q" || d.addr != dst {
					t.Fatalf("reply %q from %v, want it from %v, the address the app sent to", d.b, d.addr, dst)
				}
			}
			testenv.Recv(t, done, "the handler's return")
			testenv.Recv(t, flows, "the flow's record")
		})
	}
}

// TestUDPReplyFromUnknownNameDropped: a reply from a name the app never
// sent to cannot be shown a source, so it is dropped, not misattributed.
func TestUDPReplyFromUnknownNameDropped(t *testing.T) {
	pc := newRealPC(func(to socks.Addr) socks.Addr { return socks.Addr{Name: "other.example", Port: to.Port} })
	out := &fakeOutbound{name: "proxy", listen: func() (PacketConn, error) { return pc, nil }}
	fake := netip.MustParseAddrPort("198.18.0.9:443")
	r, flows := newRouter(t, Static(out), func(c *Config) {
		c.ReverseHost = func(a netip.Addr) (string, bool) { return "example.com", a == fake.Addr() }
		c.UDPIdle = 200 * time.Millisecond
	})
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	f.in <- dgram{[]byte("q"), fake}
	testenv.Recv(t, pc.sent, "a datagram sent upstream")
	testenv.Recv(t, done, "the handler's return")
	select {
	case d := <-f.out:
		t.Fatalf("a reply from an unknown name reached the app from %v", d.addr)
	default:
	}
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Down != 0 {
		t.Errorf("flow record counts %d bytes down for a dropped reply", rec.Down)
	}
}

// replyPeers: replies from the addresses the app sent to as they are keep
// their source (the first one, kept without a map, and later ones), a
// reply on a port the app sent a name to comes from that name's fake IP,
// one from the name itself too, and any other keeps its source.
func TestReplyPeers(t *testing.T) {
	var p replyPeers
	a := netip.MustParseAddrPort("192.0.2.1:443")
	b := netip.MustParseAddrPort("192.0.2.2:443")
	fake := netip.MustParseAddrPort("198.18.0.5:443")
	name := socks.Addr{Name: "example.com", Port: 443}
	p.sent(a, socks.AddrFromAddrPort(a))
	p.sent(a, socks.AddrFromAddrPort(a))
	if p.direct != nil {
		t.Fatalf("one address sent to as it is made a map: %v", p.direct)
	}
	p.sent(fake, name)
	p.sent(b, socks.AddrFromAddrPort(b))
	for from, want := range map[socks.Addr]netip.AddrPort{
		socks.AddrFromAddrPort(a):         a,
		socks.AddrFromAddrPort(b):         b,
		name:                              fake,
		{Name: "EXAMPLE.com.", Port: 443}: fake,
		socks.AddrFromAddrPort(netip.MustParseAddrPort("203.0.113.9:443")): fake,
		socks.AddrFromAddrPort(netip.MustParseAddrPort("203.0.113.9:80")):  netip.MustParseAddrPort("203.0.113.9:80"),
	} {
		if got, ok := p.source(from); !ok || got != want {
			t.Errorf("source(%v) = %v, %v; want %v", from, got, ok, want)
		}
	}
	if _, ok := p.source(socks.Addr{Name: "other.test", Port: 443}); ok {
		t.Error("a reply from a name never sent to has a source")
	}
}
