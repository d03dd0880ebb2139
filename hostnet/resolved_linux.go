package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// systemd-resolved's D-Bus names (org.freedesktop.resolve1(5)).
const (
	resolvedName  = "org.freedesktop.resolve1"
	resolvedPath  = dbus.ObjectPath("/org/freedesktop/resolve1")
	resolvedIface = "org.freedesktop.resolve1.Manager"
)

// resolvedLink sets the TUN's per-link DNS in systemd-resolved: tunsocks'
// DNS address, routing domain "~." (every name), default route, DNSSEC,
// LLMNR and mDNS off (fake-IP answers are unsigned), then flushes caches.
// When resolved restarts, the settings are applied again. Revert undoes
// them; if tunsocks dies the settings die with the link.
type resolvedLink struct {
	conn *dbus.Conn
	log  *slog.Logger

	mu      sync.Mutex
	ifindex int32
	dns     []netip.Addr
	applied bool
	stop    chan struct{}
	done    chan struct{}
}

// dialResolved connects to the bus (the system bus when addr is "") and
// returns nil, nil when resolved is not there and not required.
func dialResolved(addr string, required bool, log *slog.Logger) (*resolvedLink, error) {
	var conn *dbus.Conn
	var err error
	if addr == "" {
		conn, err = dbus.ConnectSystemBus()
	} else {
		conn, err = dbus.Connect(addr)
	}
	if err != nil {
		if required {
			return nil, fmt.Errorf("--dns-config resolved: D-Bus: %w", err)
		}
		log.Info("no D-Bus system bus: system DNS left alone; DNS to port 53 is captured and answered", "err", err)
		return nil, nil
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil {
		conn.Close()
		return nil, fmt.Errorf("D-Bus NameHasOwner(%s): %w", resolvedName, err)
	}
	if !has {
		conn.Close()
		if required {
			return nil, fmt.Errorf("--dns-config resolved: systemd-resolved (%s) is not running; use --dns-config none (DNS to port 53 is captured anyway)", resolvedName)
		}
		log.Info("systemd-resolved is not running: system DNS left alone; DNS to port 53 is captured and answered")
		return nil, nil
	}
	return &resolvedLink{conn: conn, log: log}, nil
}

type dnsAddr struct {
	Family int32
	Addr   []byte
}

func (r *resolvedLink) call(method string, args ...any) error {
	if err := r.conn.Object(resolvedName, resolvedPath).Call(resolvedIface+"."+method, 0, args...).Err; err != nil {
		return fmt.Errorf("systemd-resolved %s: %w", method, err)
	}
	return nil
}

// apply sets the link's DNS and starts re-applying it when resolved
// restarts.
func (r *resolvedLink) apply(ifindex int32, dns []netip.Addr) error {
	if len(dns) == 0 {
		return errors.New("systemd-resolved: tunsocks has no DNS address on the TUN (turn --dns on, or use --dns-config none)")
	}
	r.mu.Lock()
	r.ifindex, r.dns = ifindex, dns
	r.mu.Unlock()
	if err := r.set(); err != nil {
		return err
	}
	r.mu.Lock()
	r.applied = true
	r.mu.Unlock()
	r.watch()
	return nil
}

func (r *resolvedLink) set() error {
	r.mu.Lock()
	ifindex, dns := r.ifindex, r.dns
	r.mu.Unlock()
	var addrs []dnsAddr
	for _, a := range dns {
		f := int32(unix.AF_INET)
		if a.Is6() && !a.Is4In6() {
			f = unix.AF_INET6
		}
		addrs = append(addrs, dnsAddr{Family: f, Addr: a.Unmap().AsSlice()})
	}
	type domain struct {
		Name        string
		RoutingOnly bool
	}
	steps := []struct {
		method string
		args   []any
	}{
		{"SetLinkDNS", []any{ifindex, addrs}},
		{"SetLinkDomains", []any{ifindex, []domain{{".", true}}}},
		{"SetLinkDefaultRoute", []any{ifindex, true}},
		{"SetLinkDNSSEC", []any{ifindex, "no"}},
		{"SetLinkLLMNR", []any{ifindex, "no"}},
		{"SetLinkMulticastDNS", []any{ifindex, "no"}},
		{"FlushCaches", nil},
	}
	for _, s := range steps {
		if err := r.call(s.method, s.args...); err != nil {
			return err
		}
	}
	r.log.Info("systemd-resolved: every name now resolves through tunsocks", "link", ifindex, "dns", dns)
	return nil
}

// watch re-applies the settings when resolved gets a new owner (restart).
func (r *resolvedLink) watch() {
	if err := r.conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, resolvedName)); err != nil {
		r.log.Warn("systemd-resolved: cannot watch for restarts", "err", err)
		return
	}
	ch := make(chan *dbus.Signal, 8)
	r.conn.Signal(ch)
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.done)
		for {
			select {
			case <-r.stop:
				return
			case s, ok := <-ch:
				if !ok {
					return
				}
				if s.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(s.Body) < 3 {
					continue
				}
				if owner, _ := s.Body[2].(string); owner != "" {
					if err := r.set(); err != nil {
						r.log.Warn("systemd-resolved restarted; setting the TUN's DNS again failed", "err", err)
					}
				}
			}
		}
	}()
}

// revert gives the link's DNS settings back to resolved's defaults.
func (r *resolvedLink) revert(ifindex int32) error {
	r.stopWatch()
	return r.call("RevertLink", ifindex)
}

func (r *resolvedLink) stopWatch() {
	if r.stop != nil {
		close(r.stop)
		<-r.done
		r.stop = nil
	}
}

func (r *resolvedLink) close() {
	r.stopWatch()
	r.conn.Close()
}
