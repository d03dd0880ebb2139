package wg

import (
	"net/netip"
	"testing"
)

func TestPickEndpoints(t *testing.T) {
	a := func(iface, s string) ifaceAddr { return ifaceAddr{iface: iface, addr: netip.MustParseAddr(s)} }
	tun := a("tunsocks0", "198.18.0.1")
	tun.tunnel = true
	all := []ifaceAddr{
		a("lo", "127.0.0.1"), a("docker0", "172.17.0.1"), a("br-0123abcd", "172.18.0.1"), a("veth12", "10.88.0.1"),
		tun, a("eth0", "fe80::1"), a("wlan0", "2001:db8:1::5"), a("eth0", "192.168.1.23"), a("wlan0", "192.168.1.23"),
		a("eth1", "0.0.0.0"),
	}
	// The default route's source wins, alone.
	got := pickEndpoints([]ifaceAddr{a("eth0", "192.168.1.23"), a("wlan0", "2001:db8:1::5")}, all)
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("192.168.1.23") || !got[0].Default || got[0].Interface != "eth0" {
		t.Fatalf("with a default route: %+v", got)
	}
	// A default route through a TUN or a bridge does not count.
	got = pickEndpoints([]ifaceAddr{tun, a("docker0", "172.17.0.1")}, all)
	if len(got) != 2 || got[0].Addr != netip.MustParseAddr("192.168.1.23") || got[1].Addr != netip.MustParseAddr("2001:db8:1::5") || got[0].Default {
		t.Fatalf("without a usable default: %+v (want the LAN address, then the global IPv6, nothing else)", got)
	}
	if got := pickEndpoints(nil, []ifaceAddr{a("lo", "127.0.0.1"), a("docker0", "172.17.0.1")}); len(got) != 0 {
		t.Fatalf("only loopback and docker: %+v", got)
	}
	for name, want := range map[string]bool{"docker0": true, "br-5f3e2a1b9c0d": true, "veth0a1b2c": true, "virbr0": true,
		"cni0": true, "eth0": false, "wlan0": false, "br0": false, "enp3s0": false} {
		if ExcludedInterface(name) != want {
			t.Errorf("ExcludedInterface(%q) = %v", name, !want)
		}
	}
}
