//go:build !linux

package wg

import (
	"fmt"
	"net"
	"net/netip"
)

// Endpoints lists every global address of the host's up interfaces,
// never loopback, link-local or a container bridge. The default route is
// not consulted outside Linux; mark is ignored.
func Endpoints(mark uint32) ([]Candidate, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("wg: endpoints: %w", err)
	}
	var all []ifaceAddr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagPointToPoint != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				all = append(all, ifaceAddr{iface: ifc.Name, addr: ip.Unmap()})
			}
		}
	}
	return pickEndpoints(nil, all), nil
}
