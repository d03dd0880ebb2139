package wg

import (
	"net/netip"
	"regexp"
	"slices"
)

// Candidate is an address a phone may reach the server at.
type Candidate struct {
	Addr      netip.Addr
	Interface string
	// Default is true for the source address of the default route: the
	// one answer, when there is one.
	Default bool
}

// containerLink matches the interfaces of container and VM bridges and
// their veth ends, whose addresses a phone on the LAN never reaches.
var containerLink = regexp.MustCompile(`^(docker\d*|br-[0-9a-f]+|veth.*|virbr\d+.*|vnet\d+|vmnet\d+|vboxnet\d+|cni\d*|flannel.*|cali.*|weave.*|kube-.*|lxcbr\d+|lxdbr\d+|podman\d+|cilium_.*|tunl\d+|vxlan.*)$`)

// ExcludedInterface reports whether addresses on the interface called
// name are never offered as the endpoint: container and VM bridges.
func ExcludedInterface(name string) bool { return containerLink.MatchString(name) }

// ifaceAddr is one address of an up, non-loopback interface.
type ifaceAddr struct {
	iface string
	addr  netip.Addr
	// tunnel: the interface is a TUN/TAP or WireGuard device (tunsocks'
	// own TUN, a VPN): a phone does not reach the host through it.
	tunnel bool
}

// pickEndpoints applies the rules: the default route's source when it is a
// usable address, else every usable global address, IPv4 first.
func pickEndpoints(defaults []ifaceAddr, addrs []ifaceAddr) []Candidate {
	usable := func(a ifaceAddr) bool {
		return a.addr.IsValid() && !a.addr.IsUnspecified() && !a.addr.IsLoopback() &&
			!a.addr.IsLinkLocalUnicast() && !a.addr.IsMulticast() && a.addr.IsGlobalUnicast() &&
			!a.tunnel && !ExcludedInterface(a.iface)
	}
	for _, d := range defaults { // IPv4's first
		if usable(d) {
			return []Candidate{{Addr: d.addr, Interface: d.iface, Default: true}}
		}
	}
	var out []Candidate
	for _, a := range addrs {
		if usable(a) && !slices.ContainsFunc(out, func(c Candidate) bool { return c.Addr == a.addr }) {
			out = append(out, Candidate{Addr: a.addr, Interface: a.iface})
		}
	}
	slices.SortStableFunc(out, func(x, y Candidate) int {
		if x.Addr.Is4() != y.Addr.Is4() {
			if x.Addr.Is4() {
				return -1
			}
			return 1
		}
		return 0
	})
	return out
}
