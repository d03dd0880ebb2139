package socksserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/socks"
)

// PortRange is an inclusive range of ports, Lo <= Hi.
type PortRange struct{ Lo, Hi uint16 }

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return port >= r.Lo && port <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParsePortRange parses "N" or "N-M" with 0 <= N <= M <= 65535.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("port range %q: want a port N or a range N-M, with ports from 0 to 65535", s)
	}
	if a > b {
		return PortRange{}, fmt.Errorf("port range %q: the first port must not exceed the second", s)
	}
	return PortRange{Lo: uint16(a), Hi: uint16(b)}, nil
}

// ParsePrefix parses a CIDR prefix ("10.0.0.0/8", "fd00::/8") or a bare IP
// address, which stands for itself alone (/32 or /128). The prefix is
// masked, so "10.1.2.3/8" means 10.0.0.0/8.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("prefix %q: zones are not allowed", s)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), p.Addr().Unmap().BitLen())).Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("prefix %q: want a CIDR like 10.0.0.0/8 or fd00::/8, or an IP address", s)
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// deniedIP reports the rule that forbids ip:port, or "" when none does.
func (s *Server) deniedIP(ip netip.Addr, port uint16) string {
	for _, r := range s.cfg.DenyPorts {
		if r.Contains(port) {
			return "deny-port " + r.String()
		}
	}
	return s.deniedAddr(ip)
}

// deniedAddr reports the rule that forbids ip whatever the port (DenyDest,
// DenyLoopback), or "" when none does.
func (s *Server) deniedAddr(ip netip.Addr) string {
	ip = ip.Unmap()
	for _, p := range s.cfg.DenyDest {
		if p.Contains(ip) {
			return "deny-dest " + p.String()
		}
	}
	if s.cfg.DenyLoopback && s.self.isOwn(ip) {
		return "the server's own host (loopback or one of its addresses)"
	}
	return ""
}

// checkDial is the check a CheckedDialer runs on each address it is about
// to connect to.
func (s *Server) checkDial(ap netip.AddrPort) error {
	if why := s.deniedIP(ap.Addr(), ap.Port()); why != "" {
		return fmt.Errorf("%w: %s (%s)", socks.ErrNotAllowed, why, ap.Addr().Unmap())
	}
	return nil
}

// isLocalhostName reports whether name is "localhost" or a name under it,
// which resolve to loopback (RFC 6761).
func isLocalhostName(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	return name == "localhost" || strings.HasSuffix(name, ".localhost")
}

// ownAddrsTTL is how long the host's address list is trusted before it is
// read again.
const ownAddrsTTL = 5 * time.Second

// ownAddrs knows the host's own addresses, for DenyLoopback. The list is
// read from the interfaces when needed and at most every ownAddrsTTL; an
// address added since is caught after the connect (see connect).
type ownAddrs struct {
	now func() time.Time

	mu    sync.Mutex
	addrs map[netip.Addr]struct{}
	read  time.Time
}

// isOwn reports whether a (unmapped) reaches this host: loopback, the
// unspecified address, or one of its interfaces' addresses.
func (o *ownAddrs) isOwn(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.addrs == nil || now.Sub(o.read) >= ownAddrsTTL || now.Before(o.read) {
		o.read = now
		o.addrs = map[netip.Addr]struct{}{}
		if ifas, err := net.InterfaceAddrs(); err == nil {
			for _, ifa := range ifas {
				if n, ok := ifa.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						o.addrs[ip.Unmap()] = struct{}{}
					}
				}
			}
		}
	}
	_, own := o.addrs[a]
	return own
}

// denied reports the rule that forbids a CONNECT target, or "" when none
// does. A domain is resolved only when a destination rule exists; it is
// denied when any of its addresses is (or when it cannot be resolved, since
// it cannot then be checked).
func (s *Server) denied(ctx context.Context, a socks.Addr) string {
	if a.Name == "" {
		return s.deniedIP(a.IP, a.Port)
	}
	for _, r := range s.cfg.DenyPorts {
		if r.Contains(a.Port) {
			return "deny-port " + r.String()
		}
	}
	if s.cfg.DenyLoopback && isLocalhostName(a.Name) {
		return "the server's own host (a localhost name)"
	}
	if len(s.cfg.DenyDest) == 0 {
		return ""
	}
	ips, err := s.cfg.LookupNetIP(ctx, "ip", a.Name)
	if err != nil {
		return "deny-dest (name could not be resolved to be checked: " + err.Error() + ")"
	}
	for _, ip := range ips {
		if why := s.deniedIP(ip, a.Port); why != "" {
			return why + " (" + ip.String() + ")"
		}
	}
	return ""
}
