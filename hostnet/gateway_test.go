package hostnet

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestForwardedFrom(t *testing.T) {
	now := time.Unix(1000, 0)
	reads := 0
	lan := []netip.Prefix{netip.MustParsePrefix("192.168.50.1/24"), netip.MustParsePrefix("fd50::1/64")}
	var fail bool
	fwd := forwardedFrom(func() ([]netip.Prefix, error) {
		reads++
		if fail {
			return nil, errors.New("no such interface")
		}
		return lan, nil
	}, func() time.Time { return now })
	for _, c := range []struct {
		src  string
		want bool
	}{
		{"192.168.50.7", true},
		{"::ffff:192.168.50.7", true}, // mapped, as a dual-stack socket sees it
		{"fd50::7", true},
		{"192.168.50.1", false}, // the host's own address on the LAN
		{"fd50::1", false},
		{"198.18.0.1", false}, // the TUN's address: the host's own flows
		{"10.0.0.2", false},
	} {
		if got := fwd(netip.MustParseAddr(c.src)); got != c.want {
			t.Errorf("forwarded(%s) = %v, want %v", c.src, got, c.want)
		}
	}
	if reads != 1 {
		t.Errorf("read the addresses %d times within the refresh period, want 1", reads)
	}
	// The LAN is renumbered: after the refresh period the new prefix holds.
	lan = []netip.Prefix{netip.MustParsePrefix("10.9.0.1/16")}
	if fwd(netip.MustParseAddr("10.9.3.4")) {
		t.Error("a new prefix held before the refresh period ended")
	}
	now = now.Add(gatewayRefresh)
	if !fwd(netip.MustParseAddr("10.9.3.4")) || fwd(netip.MustParseAddr("192.168.50.7")) {
		t.Error("the renumbered LAN was not followed")
	}
	// An interface that is gone forwards nothing.
	fail, now = true, now.Add(gatewayRefresh)
	if fwd(netip.MustParseAddr("10.9.3.4")) {
		t.Error("a source counted as forwarded while the interface cannot be read")
	}
}
