package socksserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
	"github.com/tunsocks/tunsocks/stun"
)

// stunServer runs an RFC 5780 responder on 127.0.0.1 and 127.0.0.2 (both
// loopback on Linux) until the test ends.
func stunServer(t *testing.T) *stun.Server {
	t.Helper()
	for try := 0; try < 20; try++ {
		p1, p2 := freeUDP(t), freeUDP(t)
		if p1 == p2 {
			continue
		}
		s, err := stun.Listen(context.Background(), nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p1),
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p2), nil)
		if err != nil {
			continue
		}
		done := make(chan struct{})
		go func() { s.Serve(context.Background()); close(done) }()
		t.Cleanup(func() { s.Close(); <-done })
		return s
	}
	t.Fatal("no two free UDP ports")
	return nil
}

func freeUDP(t *testing.T) uint16 {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// TestEmulatedNAT runs the RFC 5780 discovery through the UDP relay in each
// emulated mode and expects the mode back. Each discovery runs on a fresh
// association, as RFC 5780 asks for the filtering tests.
func TestEmulatedNAT(t *testing.T) {
	st := stunServer(t)
	for _, c := range []struct{ mapping, filtering stun.Behaviour }{
		{stun.Unknown, stun.Unknown}, // the server's own: full cone
		{stun.AddressDependent, stun.EndpointIndependent},
		{stun.AddressPortDependent, stun.EndpointIndependent},
		{stun.EndpointIndependent, stun.AddressDependent},
		{stun.EndpointIndependent, stun.AddressPortDependent},
		{stun.AddressPortDependent, stun.AddressPortDependent},
	} {
		t.Run(fmt.Sprintf("%v/%v", c.mapping, c.filtering), func(t *testing.T) {
			srv := startServer(t, Config{Emulate: Emulation{UDPMapping: c.mapping, UDPFiltering: c.filtering}})
			cl, err := socksclient.Parse("socks5://"+srv.addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantM, wantF := max(c.mapping, stun.EndpointIndependent), max(c.filtering, stun.EndpointIndependent)
			o := stun.Options{Wait: 1500 * time.Millisecond}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			u, err := cl.ListenPacket(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m, err := stun.DiscoverMapping(ctx, u, st.Primary(), o)
			u.Close()
			if err != nil {
				t.Fatal(err)
			}
			if m.Behaviour != wantM || m.SourceMismatch != "" {
				t.Errorf("mapping %v (mapped %v, %q), want %v", m.Behaviour, m.Mapped, m.SourceMismatch, wantM)
			}
			u, err = cl.ListenPacket(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			f, err := stun.DiscoverFiltering(ctx, u, st.Primary(), o)
			if err != nil {
				t.Fatal(err)
			}
			if f.Behaviour != wantF || f.SourceMismatch != "" {
				t.Errorf("filtering %v (%q), want %v", f.Behaviour, f.SourceMismatch, wantF)
			}
		})
	}
}

func TestEmulateBoundZero(t *testing.T) {
	echo := peerEcho(t, "tcp", "127.0.0.1:0")
	srv := startServer(t, Config{Emulate: Emulation{BoundZero: true}})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(1, mustAP(echo)))
	rep, bound := readReply5(t, c)
	if rep != 0 || bound.Addr() != netip.IPv4Unspecified() || bound.Port() == 0 {
		t.Errorf("CONNECT reply %v %v, want success with 0.0.0.0 and a port", rep, bound)
	}
	u := dial(t, srv.addr)
	noAuth(t, u)
	send(t, u, req5(3, mustAP("0.0.0.0:0")))
	rep, bound = readReply5(t, u)
	if rep != 0 || bound.Addr() != netip.IPv4Unspecified() || bound.Port() == 0 {
		t.Errorf("UDP ASSOCIATE reply %v %v, want success with 0.0.0.0 and a port", rep, bound)
	}
}

func TestEmulateAcceptBadPassword(t *testing.T) {
	if _, err := New(Config{Emulate: Emulation{AcceptBadPassword: true}}); err == nil {
		t.Error("AcceptBadPassword without Users accepted")
	}
	echo := peerEcho(t, "tcp", "127.0.0.1:0")
	srv := startServer(t, Config{Users: map[string]string{"alice": "right"}, Emulate: Emulation{AcceptBadPassword: true}})
	cl, _ := socksclient.Parse("socks5://mallory:wrong@"+srv.addr, nil)
	c, err := cl.DialContext(context.Background(), "tcp", echo)
	if err != nil {
		t.Fatalf("wrong credentials refused: %v", err)
	}
	c.Close()
	// Without credentials the method negotiation still wants 0x02.
	anon, _ := socksclient.Parse("socks5://"+srv.addr, nil)
	if _, err := anon.DialContext(context.Background(), "tcp", echo); err == nil {
		t.Error("no-auth accepted")
	}
}

func TestEmulateConnectOnly443(t *testing.T) {
	echo := peerEcho(t, "tcp", "127.0.0.1:0")
	srv := startServer(t, Config{Emulate: Emulation{ConnectOnly443: true}})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(1, mustAP(echo)))
	if rep, _ := readReply5(t, c); socks.Reply(rep) != socks.NotAllowed {
		t.Errorf("CONNECT to %s: reply %v, want not allowed", echo, socks.Reply(rep))
	}
	// Port 443 is let through to the dial (nothing listens there: refused).
	c = dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(1, mustAP("127.0.0.1:443")))
	if rep, _ := readReply5(t, c); socks.Reply(rep) == socks.NotAllowed {
		t.Errorf("CONNECT to port 443 not allowed")
	}
}
