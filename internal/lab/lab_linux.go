package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/netns"
)

var labSeq atomic.Int64

// New creates a lab. On failure everything it made is removed.
func New(opts Options) (_ *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: building network namespaces needs root")
	}
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	id := fmt.Sprintf("%s%d-%d-", Prefix, os.Getpid(), labSeq.Add(1))
	l := &Lab{App: id + "app", Proxy: id + "proxy", Remote: id + "remote"}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	for _, ns := range []string{l.App, l.Proxy, l.Remote} {
		if err := netns.Create(ns); err != nil {
			return nil, err
		}
		if err := WithNetlink(ns, func(h *netlink.Handle) error {
			lo, err := h.LinkByName("lo")
			if err != nil {
				return err
			}
			return h.LinkSetUp(lo)
		}); err != nil {
			return nil, fmt.Errorf("lab: %s: loopback up: %w", ns, err)
		}
	}
	if err := l.link(l.App, "up0", AppUplink4, AppUplink6, l.Proxy, "down0", ProxyDown4, ProxyDown6, opts.MTU); err != nil {
		return nil, err
	}
	if err := l.link(l.Proxy, "up0", ProxyUp4, ProxyUp6, l.Remote, "down0", Remote4, Remote6, opts.MTU); err != nil {
		return nil, err
	}
	return l, nil
}

// Link makes a veth pair between two namespaces (the lab's or others a
// test made, such as a second app host), named nameA in nsA and nameB in
// nsB, addresses both ends and brings them up.
func (l *Lab) Link(nsA, nameA string, a4, a6 netip.Prefix, nsB, nameB string, b4, b6 netip.Prefix, mtu int) error {
	if mtu == 0 {
		mtu = 1500
	}
	return l.link(nsA, nameA, a4, a6, nsB, nameB, b4, b6, mtu)
}

// link makes a veth pair between two namespaces and addresses both ends.
func (l *Lab) link(nsA, nameA string, a4, a6 netip.Prefix, nsB, nameB string, b4, b6 netip.Prefix, mtu int) error {
	nsBHandle, err := vnetns.GetFromName(nsB)
	if err != nil {
		return err
	}
	defer nsBHandle.Close()
	tmp := fmt.Sprintf("tskpeer%d", labSeq.Add(1))
	err = WithNetlink(nsA, func(h *netlink.Handle) error {
		// The peer gets a temporary name: nameB may already exist in nsA.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA, MTU: mtu}, PeerName: tmp}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth %s/%s: %w", nameA, nameB, err)
		}
		peer, err := h.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := h.LinkSetNsFd(peer, int(nsBHandle)); err != nil {
			return fmt.Errorf("move %s to %s: %w", nameB, nsB, err)
		}
		return configure(h, nameA, a4, a6)
	})
	if err != nil {
		return fmt.Errorf("lab: %s: %w", nsA, err)
	}
	if err := WithNetlink(nsB, func(h *netlink.Handle) error {
		peer, err := h.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := h.LinkSetName(peer, nameB); err != nil {
			return err
		}
		return configure(h, nameB, b4, b6)
	}); err != nil {
		return fmt.Errorf("lab: %s: %w", nsB, err)
	}
	return nil
}

func configure(h *netlink.Handle, name string, p4, p6 netip.Prefix) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{p4, p6} {
		addr := &netlink.Addr{IPNet: ipnet(p)}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // usable at once, no duplicate detection wait
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s on %s: %w", p, name, err)
		}
	}
	return h.LinkSetUp(link)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// WithNetlink runs fn with a netlink handle bound to the named namespace;
// the calling thread never leaves its own namespace.
func WithNetlink(ns string, fn func(h *netlink.Handle) error) error {
	nsh, err := vnetns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

// RouteDefaultVia waits up to timeout for device dev to appear and come up
// in the app host, then points the app host's IPv4 and IPv6 default routes
// at it (IPv4 only when its MTU is below IPv6's 1280). The proxy host stays reachable through its own, more specific,
// connected route, so tunsocks' upstream connections never loop.
func (l *Lab) RouteDefaultVia(dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	return WithNetlink(l.App, func(h *netlink.Handle) error {
		var link netlink.Link
		for {
			var err error
			link, err = h.LinkByName(dev)
			if err == nil && link.Attrs().Flags&net.FlagUp != 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("lab: device %s did not come up in %s within %v", dev, l.App, timeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, dst := range []netip.Prefix{defaultRoute4, defaultRoute6} {
			if dst.Addr().Is6() && link.Attrs().MTU < 1280 {
				continue // the kernel runs no IPv6 on such a link
			}
			r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipnet(dst), Scope: netlink.SCOPE_LINK}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("lab: default route %s via %s: %w", dst, dev, err)
			}
		}
		return nil
	})
}

// EnableDirect gives the app host a way around its TUN for sockets marked
// with mark (what tunsocks' DIRECT outbound does with --fwmark): a policy
// rule sends them to a table whose default route is the proxy host, which
// forwards between its links; the remote host routes back through it. This
// is the lab's version of how a real host keeps tunsocks' own traffic off
// the TUN.
func (l *Lab) EnableDirect(mark uint32) error {
	const table = 100
	if err := l.Do(l.Proxy, func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1\n"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("lab: forwarding on the proxy host: %w", err)
	}
	if err := WithNetlink(l.Remote, func(h *netlink.Handle) error {
		for _, gw := range []netip.Addr{ProxyUp4.Addr(), ProxyUp6.Addr()} {
			dst := defaultRoute4
			if gw.Is6() {
				dst = defaultRoute6
			}
			if err := h.RouteReplace(&netlink.Route{Dst: ipnet(dst), Gw: gw.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("lab: remote host's way back: %w", err)
	}
	return WithNetlink(l.App, func(h *netlink.Handle) error {
		up, err := h.LinkByName("up0")
		if err != nil {
			return err
		}
		for _, gw := range []netip.Addr{ProxyDown4.Addr(), ProxyDown6.Addr()} {
			dst, family := defaultRoute4, unix.AF_INET
			if gw.Is6() {
				dst, family = defaultRoute6, unix.AF_INET6
			}
			if err := h.RouteReplace(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: ipnet(dst), Gw: gw.AsSlice(), Table: table}); err != nil {
				return fmt.Errorf("lab: direct route: %w", err)
			}
			rule := netlink.NewRule()
			rule.Family, rule.Mark, rule.Table, rule.Priority = family, mark, table, 100
			if err := h.RuleAdd(rule); err != nil {
				return fmt.Errorf("lab: fwmark rule: %w", err)
			}
		}
		return nil
	})
}

// SetResolvConf makes `ip netns exec` in namespace ns see a resolv.conf
// naming these nameservers (the standard /etc/netns/NAME/resolv.conf
// overlay, removed by Close). The host's own resolv.conf is not touched.
func (l *Lab) SetResolvConf(ns string, servers ...netip.Addr) error {
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	b.WriteString("options timeout:2 attempts:2\n")
	return os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(b.String()), 0o644)
}

// Do runs fn inside one of the lab's namespaces (see netns.Do).
func (l *Lab) Do(ns string, fn func() error) error { return netns.Do(ns, fn) }

// Close deletes the lab's namespaces and with them every link in them.
func (l *Lab) Close() error {
	var errs []error
	for _, ns := range []string{l.App, l.Proxy, l.Remote} {
		if netns.Exists(ns) {
			errs = append(errs, netns.Delete(ns))
		}
		if err := os.RemoveAll(filepath.Join("/etc/netns", ns)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CleanupStale deletes lab namespaces left behind by processes that no
// longer run (a crashed demo or test), and returns their names.
func CleanupStale() ([]string, error) {
	names, err := netns.List()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		if !strings.HasPrefix(n, Prefix) {
			continue
		}
		rest := strings.TrimPrefix(n, Prefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == nil {
			continue // still running
		}
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
			continue
		}
		os.RemoveAll(filepath.Join("/etc/netns", n))
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}
