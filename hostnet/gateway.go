package hostnet

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// gatewayRefresh is how long ForwardedFrom trusts the interface's
// addresses before reading them again (a DHCP renewal on the LAN).
const gatewayRefresh = 10 * time.Second

// ForwardedFrom returns a test that tells the flows devices forward
// through this host on interface iface (gateway mode) from the host's own
// flows on the same TUN: a source inside one of iface's prefixes that is
// not an address of iface itself. The addresses are read again at most
// every 10 s; when they cannot be read, nothing counts as forwarded.
func ForwardedFrom(iface string) func(src netip.Addr) bool {
	return forwardedFrom(func() ([]netip.Prefix, error) { return ifacePrefixes(iface) }, time.Now)
}

func ifacePrefixes(iface string) ([]netip.Prefix, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	as, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	var ps []netip.Prefix
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

func forwardedFrom(read func() ([]netip.Prefix, error), now func() time.Time) func(netip.Addr) bool {
	var (
		mu     sync.Mutex
		ps     []netip.Prefix
		readAt time.Time
	)
	return func(src netip.Addr) bool {
		src = src.Unmap()
		mu.Lock()
		if t := now(); readAt.IsZero() || t.Sub(readAt) >= gatewayRefresh {
			ps, _ = read() // an error leaves no prefix: nothing is forwarded
			readAt = t
		}
		cur := ps
		mu.Unlock()
		return slices.ContainsFunc(cur, func(p netip.Prefix) bool {
			return p.Addr() != src && p.Masked().Contains(src)
		})
	}
}
