// Package direct is the dialer for every socket tunsocks itself opens toward
// the network. When tunsocks captures the host's traffic, its own upstream
// connections must not be captured again: each socket is marked (SO_MARK, so
// a policy rule can route it around the TUN) and/or bound to the uplink
// interface (SO_BINDTODEVICE). Both are Linux-only; on other systems a
// Dialer with a Mark or Interface refuses to dial rather than loop.
package direct

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/netns"
)

// Dialer opens connections and packet sockets that bypass the TUN.
// The zero value dials like a plain net.Dialer.
type Dialer struct {
	// Mark is the SO_MARK (fwmark) put on every socket; 0 sets none.
	Mark uint32
	// Interface binds every socket to this device (SO_BINDTODEVICE); "" binds none.
	Interface string
	// Timeout bounds a dial when the context has no earlier deadline; 0 means 30 s.
	Timeout time.Duration
	// Resolver, when set, resolves names for DialContext; nil means the
	// system's, asked by Go's own resolver over sockets that carry Mark
	// and Interface too when either is set (so with --auto-route the
	// lookup of an upstream's name is not captured by the TUN). Callers
	// that must not resolve locally pass IP addresses.
	Resolver *net.Resolver
	// Hosts pins names to addresses: DialContext dials a name found here
	// without resolving it (an upstream's name resolved once at start,
	// before the system's DNS pointed at tunsocks).
	Hosts map[string][]netip.Addr
	// KeepAlive is the TCP keep-alive period; 0 means the net package default,
	// negative disables it.
	KeepAlive time.Duration
	// Netns, when set, creates every socket inside this named network
	// namespace (Linux). The demo's lab uses it so that a tunsocks running in
	// the lab's hosts never opens a socket in the caller's namespace.
	Netns string
}

// inNetns runs fn in d.Netns, or here when none is set.
func (d *Dialer) inNetns(fn func() error) error {
	if d.Netns == "" {
		return fn()
	}
	return netns.Do(d.Netns, fn)
}

func (d *Dialer) control(network, address string, c syscall.RawConn) error {
	if d.Mark == 0 && d.Interface == "" {
		return nil
	}
	return setSockopts(c, d.Mark, d.Interface)
}

func (d *Dialer) netDialer() *net.Dialer {
	t := d.Timeout
	if t == 0 {
		t = 30 * time.Second
	}
	return &net.Dialer{Timeout: t, KeepAlive: d.KeepAlive, Resolver: d.resolver(), Control: d.control}
}

// resolver is d.Resolver, or for a marked or bound Dialer a Go resolver
// whose sockets are marked and bound the same way.
func (d *Dialer) resolver() *net.Resolver {
	if d.Resolver != nil || (d.Mark == 0 && d.Interface == "") {
		return d.Resolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		nd := net.Dialer{Control: d.control}
		return nd.DialContext(ctx, network, address)
	}}
}

// DialContext dials address on network ("tcp", "tcp4", "tcp6", "udp", ...).
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.DialContextChecked(ctx, network, address, nil)
}

// DialContextChecked is DialContext that calls check with each address it
// is about to connect to (after resolving a name, or a pinned one from
// Hosts) and fails the dial with check's error instead of connecting. A
// server vets destinations with it (socksserver.CheckedDialer): the
// address checked is the address dialed. A nil check is DialContext.
func (d *Dialer) DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (c net.Conn, err error) {
	if host, port, serr := net.SplitHostPort(address); serr == nil && len(d.Hosts[host]) > 0 {
		return d.dialPinned(ctx, network, host, port, check)
	}
	nd := d.netDialer()
	if check != nil {
		nd.Control = func(network, address string, rc syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("direct: cannot check the address %q: %w", address, err)
			}
			if err := check(ap); err != nil {
				return err
			}
			return d.control(network, address, rc)
		}
	}
	err = d.inNetns(func() error {
		c, err = nd.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// dialPinned tries the pinned addresses of host in turn.
func (d *Dialer) dialPinned(ctx context.Context, network, host, port string, check func(netip.AddrPort) error) (net.Conn, error) {
	var errs []error
	for _, a := range d.Hosts[host] {
		c, err := d.DialContextChecked(ctx, network, net.JoinHostPort(a.String(), port), check)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// ListenPacket opens a UDP socket (for UDP ASSOCIATE relays and DNS).
func (d *Dialer) ListenPacket(ctx context.Context, network, address string) (pc net.PacketConn, err error) {
	lc := net.ListenConfig{Control: d.control}
	err = d.inNetns(func() error {
		pc, err = lc.ListenPacket(ctx, network, address)
		return err
	})
	return pc, err
}

// Listen opens a TCP listener (for BIND).
func (d *Dialer) Listen(ctx context.Context, network, address string) (ln net.Listener, err error) {
	lc := net.ListenConfig{Control: d.control, KeepAlive: d.KeepAlive}
	err = d.inNetns(func() error {
		ln, err = lc.Listen(ctx, network, address)
		return err
	})
	return ln, err
}
