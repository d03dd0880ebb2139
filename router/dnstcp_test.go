package router

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// streamDNS is fakeDNS that also answers DNS over TCP: each framed query
// "q" gets the framed answer "answer:q".
type streamDNS struct{ fakeDNS }

func (streamDNS) ServeStream(ctx context.Context, c net.Conn) error {
	defer c.Close()
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return nil
		}
		q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return err
		}
		resp := append([]byte("answer:"), q...)
		out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
		if _, err := c.Write(append(out, resp...)); err != nil {
			return err
		}
	}
}

// TestDNSOverTCPAnsweredInProcess: a TCP connection to port 53 of the DNS
// address is answered by the DNS handler itself, like UDP queries are,
// instead of being routed to an upstream.
func TestDNSOverTCPAnsweredInProcess(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t)
	out := &fakeOutbound{name: "up", dial: func(a string) (net.Conn, error) { return nil, errors.New("dialed " + a) }}
	r, flows := newRouter(t, Static(out), func(c *Config) { c.DNS = streamDNS{} })
	req := newFakeReq("198.18.0.2:53")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(context.Background(), nil, req); close(done) }()
	select {
	case <-req.accepted:
	case <-req.rejected:
		t.Fatalf("the connection to the DNS address was refused; outbound dialed %v", out.dialed)
	case <-time.After(testenv.Patience):
		t.Fatal("the connection to the DNS address was neither accepted nor refused")
	}
	appRemote.Write([]byte{0, 2, 'q', '1'})
	b := make([]byte, 2+len("answer:q1"))
	if _, err := io.ReadFull(appRemote, b); err != nil || string(b[2:]) != "answer:q1" {
		t.Fatalf("DNS over TCP answer %q, %v", b, err)
	}
	appRemote.CloseWrite()
	testenv.Recv(t, done, "the handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Outbound != "DNS" {
		t.Errorf("flow record %+v, want outbound DNS", rec)
	}
	if len(out.dialed) != 0 {
		t.Errorf("outbound dialed %v for a DNS query", out.dialed)
	}
}

// TestUDPDNSShortPathThenOtherTraffic: a socket that starts with DNS to the
// intercepted address is answered query by query; when it then sends
// elsewhere, that datagram and the rest are routed as an ordinary flow,
// DNS still answered in between, and the flow record counts both.
func TestUDPDNSShortPathThenOtherTraffic(t *testing.T) {
	pc := &fakePC{replies: make(chan dgram, 8), closed: make(chan struct{}), sent: make(chan string, 8)}
	out := &fakeOutbound{name: "up", listen: func() (PacketConn, error) { return pc, nil }}
	r, flows := newRouter(t, Static(out), func(c *Config) { c.DNS = fakeDNS{}; c.DNSIdle = time.Second }) // long against the test's steps
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	dnsAddr := netip.MustParseAddrPort("198.18.0.2:53")
	for _, q := range []string{"q1", "q2"} {
		f.in <- dgram{[]byte(q), dnsAddr}
		if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "answer:"+q || d.addr != dnsAddr {
			t.Fatalf("DNS answer %q from %v", d.b, d.addr)
		}
	}
	select {
	case a := <-pc.sent:
		t.Fatalf("a DNS query went to the outbound (%s)", a)
	default:
	}
	f.in <- dgram{[]byte("x"), netip.MustParseAddrPort("192.0.2.1:7")}
	if a := testenv.Recv(t, pc.sent, "a datagram sent upstream"); a != "192.0.2.1:7" {
		t.Fatalf("sent to %s", a)
	}
	for _, want := range []string{"re:x", "other"} {
		if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != want {
			t.Fatalf("reply %q, want %q", d.b, want)
		}
	}
	f.in <- dgram{[]byte("q3"), dnsAddr}
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "answer:q3" {
		t.Fatalf("DNS answer within the session %q", d.b)
	}
	testenv.Recv(t, done, "the handler's return")
	rec := testenv.Recv(t, flows, "the flow's record")
	// up: q1 q2 x q3; down: answer:q1 answer:q2 re:x other answer:q3
	if rec.Outbound != "DNS" || rec.Up != 2+2+1+2 || rec.Down != 9+9+4+5+9 || !errorsIsIdle(rec.Err) {
		t.Fatalf("flow record %+v", rec)
	}
}

// TestUDPDNSShortPathIdle: a DNS-only flow ends after DNSIdle with the
// idle error, and the app's socket is closed.
func TestUDPDNSShortPathIdle(t *testing.T) {
	r, flows := newRouter(t, Static(&fakeOutbound{name: "up"}), func(c *Config) { c.DNS = fakeDNS{}; c.DNSIdle = 100 * time.Millisecond })
	f := newFakeFlow()
	f.in <- dgram{[]byte("q"), netip.MustParseAddrPort("198.18.0.2:53")}
	r.handleUDP(context.Background(), nil, f)
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "answer:q" {
		t.Fatalf("answer %q", d.b)
	}
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.Outbound != "DNS" || rec.Up != 1 || rec.Down != 8 || !errorsIsIdle(rec.Err) {
		t.Fatalf("flow record %+v", rec)
	}
	select {
	case <-f.closed:
	default:
		t.Fatal("the flow was not closed")
	}
}
