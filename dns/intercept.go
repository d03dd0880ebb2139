package dns

import (
	"context"
	"net"
	"net/netip"
	"slices"
)

// Intercept is the router's DNS hook: it claims DNS to the DNS address of
// the Server's fake-IP pool (both families), or with hijack DNS to port 53
// of any address, and answers it with the Server: datagrams with Handle,
// TCP connections with ServeStream.
type Intercept struct {
	srv          *Server
	addr4, addr6 netip.Addr
	hijack       bool
	also         []netip.Addr // more addresses answered here (see Also)
}

// NewIntercept returns the hook for s, which must have a Pool.
func NewIntercept(s *Server, hijack bool) *Intercept {
	return &Intercept{srv: s, addr4: s.pool.DNSAddr(), addr6: s.pool.DNSAddr6(), hijack: hijack}
}

// Intercept reports whether DNS to dst is answered here.
func (h *Intercept) Intercept(dst netip.AddrPort) bool {
	if dst.Port() != 53 {
		return false
	}
	a := dst.Addr().Unmap()
	return h.hijack || a == h.addr4 || (h.addr6.IsValid() && a == h.addr6) || slices.Contains(h.also, a)
}

// Also claims DNS to these addresses too: the WireGuard server's tunnel
// addresses, which its peers' configs name as their DNS server. Call it
// before the hook is in use.
func (h *Intercept) Also(addrs ...netip.Addr) {
	for _, a := range addrs {
		if a.IsValid() {
			h.also = append(h.also, a.Unmap())
		}
	}
}

// Handle answers one query datagram (see Server.Handle).
func (h *Intercept) Handle(ctx context.Context, q []byte) ([]byte, error) {
	return h.srv.Handle(ctx, q)
}

// ServeStream answers DNS over TCP on c (see Server.ServeStream).
func (h *Intercept) ServeStream(ctx context.Context, c net.Conn) error {
	return h.srv.ServeStream(ctx, c)
}
