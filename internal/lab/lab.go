// Package lab builds a throwaway three-host network out of network
// namespaces, for the demo, the end-to-end tests and the benchmarks:
//
//	app ──veth── proxy ──veth── remote
//
// The app host reaches only the proxy host directly; once tunsocks runs in
// the app host and the default routes point at its TUN, everything else the
// app sends goes through tunsocks and a SOCKS server on the proxy host to the
// remote host. Nothing is changed in the namespace the caller runs in: links
// are created inside the lab's namespaces and deleting a namespace removes
// them.
package lab

import (
	"net"
	"net/netip"
)

// Addresses inside every lab. They exist only in the lab's own namespaces.
var (
	AppUplink4    = netip.MustParsePrefix("10.201.0.2/24") // app side of app<->proxy
	ProxyDown4    = netip.MustParsePrefix("10.201.0.1/24") // proxy side of app<->proxy: where the SOCKS server listens
	ProxyUp4      = netip.MustParsePrefix("10.202.0.1/24") // proxy side of proxy<->remote
	Remote4       = netip.MustParsePrefix("10.202.0.2/24") // the remote host
	AppUplink6    = netip.MustParsePrefix("fd01::2/64")
	ProxyDown6    = netip.MustParsePrefix("fd01::1/64")
	ProxyUp6      = netip.MustParsePrefix("fd02::1/64")
	Remote6       = netip.MustParsePrefix("fd02::2/64")
	defaultRoute4 = netip.MustParsePrefix("0.0.0.0/0")
	defaultRoute6 = netip.MustParsePrefix("::/0")
)

// Prefix starts the name of every lab namespace, followed by the owning pid.
const Prefix = "tsk-"

// Lab is one set of namespaces.
type Lab struct {
	App, Proxy, Remote string // namespace names
}

// Options tunes a lab.
type Options struct {
	// MTU of the veth links; 0 means 1500.
	MTU int
}

// EchoUDP sends every datagram pc receives back to its sender until pc is
// closed: the remote host's UDP echo service of the demo and the e2e tests.
func EchoUDP(pc net.PacketConn) {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}
