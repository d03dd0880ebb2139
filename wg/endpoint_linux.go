package wg

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Probe destinations for "which source address would the default route
// use": never contacted, only looked up in the routing table.
var routeProbes = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}

// Endpoints lists the addresses a phone may reach this host at: the source
// address of the default route (looked up as a socket with mark would be
// routed, so tunsocks' own TUN routes do not count), else every global
// address; never 0.0.0.0, loopback, link-local, a TUN or a container
// bridge. An empty list means none was found.
func Endpoints(mark uint32) ([]Candidate, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("wg: endpoints: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("wg: endpoints: links: %w", err)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	describe := func(index int, a netip.Addr) (ifaceAddr, bool) {
		l, ok := byIndex[index]
		if !ok || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().Flags&net.FlagLoopback != 0 {
			return ifaceAddr{}, false
		}
		t := l.Type()
		return ifaceAddr{iface: l.Attrs().Name, addr: a, tunnel: t == "tuntap" || t == "wireguard" || t == "tun"}, true
	}
	var defaults []ifaceAddr
	for _, dst := range routeProbes {
		routes, err := h.RouteGetWithOptions(dst.AsSlice(), &netlink.RouteGetOptions{Mark: mark})
		if err != nil || len(routes) == 0 {
			continue // no route for this family
		}
		src, ok := netip.AddrFromSlice(routes[0].Src)
		if !ok {
			continue
		}
		if d, ok := describe(routes[0].LinkIndex, src.Unmap()); ok {
			defaults = append(defaults, d)
		}
	}
	var all []ifaceAddr
	for _, l := range links {
		addrs, err := h.AddrList(l, unix.AF_UNSPEC)
		if err != nil {
			continue // the link went away meanwhile
		}
		for _, a := range addrs {
			if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DEPRECATED|unix.IFA_F_DADFAILED) != 0 || a.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			if d, ok := describe(l.Attrs().Index, ip.Unmap()); ok {
				all = append(all, d)
			}
		}
	}
	return pickEndpoints(defaults, all), nil
}
