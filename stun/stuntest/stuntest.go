// Package stuntest runs an RFC 5780 STUN responder on loopback for tests
// of packages that probe NAT behaviour through it (check, socksserver).
package stuntest

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/tunsocks/tunsocks/stun"
)

// Loopback runs a responder on 127.0.0.1 and 127.0.0.2 (both loopback on
// Linux), on two free UDP ports, until the test ends.
func Loopback(t testing.TB) *stun.Server {
	t.Helper()
	for try := 0; try < 20; try++ {
		p1, p2 := freeUDP(t), freeUDP(t)
		if p1 == p2 {
			continue
		}
		s, err := stun.Listen(context.Background(), nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p1),
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p2), nil)
		if err != nil {
			continue // a port was taken in between
		}
		done := make(chan struct{})
		go func() { s.Serve(context.Background()); close(done) }()
		t.Cleanup(func() { s.Close(); <-done })
		return s
	}
	t.Fatal("no two free UDP ports")
	return nil
}

func freeUDP(t testing.TB) uint16 {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}
