package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socks"
)

// TestFrontDoorPackets: a front door's association decides each datagram
// by its destination, passes names on unresolved, hands back the replies
// from their senders, drops rejected datagrams with ErrNotAllowed, and
// tags every decision with the front door's inbound and the request's
// client and user.
func TestFrontDoorPackets(t *testing.T) {
	pc := &fakePC{replies: make(chan dgram, 8), closed: make(chan struct{}), sent: make(chan string, 8)}
	named := newRealPC(func(to socks.Addr) socks.Addr { return to })
	up := &fakeOutbound{name: "up", listen: func() (PacketConn, error) { return pc, nil }}
	byName := &fakeOutbound{name: "byname", listen: func() (PacketConn, error) { return named, nil }}
	var mu sync.Mutex
	var seen []rules.Metadata
	r, _ := newRouter(t, func(m *rules.Metadata) Decision {
		mu.Lock()
		seen = append(seen, *m)
		mu.Unlock()
		switch {
		case m.Host == "blocked.test":
			return Decision{Action: Reject, Rule: "DOMAIN,blocked.test,REJECT"}
		case m.Host != "":
			return Decision{Action: Proxy, Outbound: byName}
		}
		return Decision{Action: Proxy, Outbound: up}
	}, nil)
	client := netip.MustParseAddrPort("192.168.1.5:4000")
	fd := r.FrontDoor(Inbound{Type: rules.InSocks, Name: "socks"}, func(context.Context) (netip.AddrPort, string) { return client, "alice" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := fd.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:7"))); err != nil {
		t.Fatal(err)
	}
	if a := testenv.Recv(t, pc.sent, "a datagram sent upstream"); a != "192.0.2.1:7" {
		t.Fatalf("sent to %s", a)
	}
	if _, err := p.WriteTo([]byte("y"), socks.Addr{Name: "example.com", Port: 53}); err != nil {
		t.Fatal(err)
	}
	if a := testenv.Recv(t, named.sent, "a datagram sent upstream"); a != "example.com:53" {
		t.Fatalf("sent to %s, want the name unresolved", a)
	}
	if _, err := p.WriteTo([]byte("z"), socks.Addr{Name: "blocked.test", Port: 53}); !errors.Is(err, socks.ErrNotAllowed) {
		t.Fatalf("rejected datagram: %v, want ErrNotAllowed", err)
	}
	got := map[string]string{}
	b := make([]byte, 100)
	p.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 3 { // re:x and other from up, re:y from byname
		n, from, err := p.ReadFrom(b)
		if err != nil {
			t.Fatal(err)
		}
		got[string(b[:n])] = from.String()
	}
	want := map[string]string{"re:x": "192.0.2.1:7", "other": "192.0.2.99:9999", "re:y": "example.com:53"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("reply %q from %q, want from %q (all: %v)", k, got[k], v, got)
		}
	}
	p.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := p.ReadFrom(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v", err)
	}
	p.Close()
	if _, _, err := p.ReadFrom(b); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	for _, c := range []chan struct{}{pc.closed, named.closed} {
		select {
		case <-c:
		default:
			t.Error("a session outlived Close")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range seen {
		if m.InType != "socks" || m.InName != "socks" || m.InUser != "alice" || m.Src != client || m.Network != "udp" {
			t.Errorf("metadata %+v", m)
		}
	}
}

// checkedOutbound is a fakeOutbound with the CheckedOutbound capability:
// it resolves every name to ip and runs the check before "connecting".
type checkedOutbound struct {
	fakeOutbound
	ip netip.Addr
}

func (o *checkedOutbound) DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error) {
	a, err := socks.ParseAddr(address)
	if err != nil {
		return nil, err
	}
	ip := a.IP
	if a.Name != "" {
		ip = o.ip
	}
	if err := check(netip.AddrPortFrom(ip, a.Port)); err != nil {
		return nil, err
	}
	return o.fakeOutbound.DialContext(ctx, network, address)
}

// TestFrontDoorChecked: a server's check runs on the address an outbound
// that connects itself (DIRECT) reaches, and not on one that carries the
// connection to a proxy.
func TestFrontDoorChecked(t *testing.T) {
	errNo := errors.New("own host")
	check := func(ap netip.AddrPort) error {
		if ap.Addr().IsLoopback() {
			return errNo
		}
		return nil
	}
	dialed := 0
	dial := func(string) (net.Conn, error) { dialed++; return nil, errors.New("dialed") }
	direct := &checkedOutbound{fakeOutbound: fakeOutbound{name: "DIRECT", dial: dial}, ip: netip.MustParseAddr("127.0.0.1")}
	proxy := &fakeOutbound{name: "up", dial: dial}
	for _, tc := range []struct {
		out     Outbound
		wantErr error
	}{{direct, errNo}, {proxy, nil}} {
		r, _ := newRouter(t, Static(tc.out), nil)
		fd := r.FrontDoor(Inbound{Type: rules.InSocks, Name: "socks"}, nil)
		dialed = 0
		_, err := fd.DialContextChecked(context.Background(), "tcp", "rebound.example:80", check)
		if tc.wantErr != nil && (!errors.Is(err, tc.wantErr) || dialed != 0) {
			t.Errorf("%s: %v after %d dials, want the check's error and no dial", tc.out.Name(), err, dialed)
		}
		if tc.wantErr == nil && dialed != 1 {
			t.Errorf("%s: %d dials (%v), want the proxy dialed unchecked", tc.out.Name(), dialed, err)
		}
	}
}
