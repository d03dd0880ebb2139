// Package procinfo finds the local process that owns a flow: the executable
// path and user id behind a source address and port.
//
// On Linux it asks the kernel for the socket bound to that address with
// netlink sock_diag (which yields the socket's inode and owner uid), then
// finds the process holding socket:[inode] among /proc/*/fd and reads its
// /proc/PID/exe. Other systems get an error wrapping errors.ErrUnsupported.
package procinfo

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/internal/lru"
)

// Errors wrapped by Lookup.
var (
	// ErrNotFound: no local socket owns the address.
	ErrNotFound = errors.New("no local socket owns the address")
	// ErrNoProcess: the socket exists but no visible process holds it (it
	// belongs to another PID namespace, is closing, or /proc is not
	// readable). The uid is still returned.
	ErrNoProcess = errors.New("no visible process holds the socket")
)

const maxCache = 4096 // results kept at most

// Finder looks up the process owning a local socket. It caches answers for
// a short time, so a burst of flows from one socket costs one lookup. It is
// safe for concurrent use.
type Finder struct {
	ttl   time.Duration
	now   func() time.Time
	cache *lru.Cache[cacheKey, cacheEntry]

	sys *sysFinder // the OS-specific part
}

type cacheKey struct {
	network string
	src     netip.AddrPort
}

type cacheEntry = Owner

// NewFinder returns a Finder that keeps each answer for ttl (a couple of
// seconds is right: a port can be reused by another process after its
// socket closes). ttl <= 0 disables caching of answers.
func NewFinder(ttl time.Duration) *Finder {
	return &Finder{ttl: ttl, now: time.Now, cache: lru.NewCache[cacheKey, cacheEntry](maxCache), sys: newSysFinder()}
}

// Lookup returns the executable path and uid of the process owning the
// local socket whose address is src, for network "tcp" or "udp" ("tcp4",
// "udp6" and so on are accepted). An IPv4 src also finds dual-stack IPv6
// sockets (bound to :: or to the IPv4-mapped address). When the socket is
// found but not its process, it returns the uid with an error wrapping
// ErrNoProcess.
func (f *Finder) Lookup(network string, src netip.AddrPort) (path string, uid int, err error) {
	return f.LookupFlow(network, src, netip.AddrPort{})
}

// LookupFlow is Lookup for a flow whose destination dst is known too (a flow
// captured from the TUN device, or a SOCKS client's connection to us: dst
// is the address the app's socket is connected to). For TCP this lets the
// kernel look up the one connection instead of walking all of them, about
// a hundred times faster; an invalid dst falls back to Lookup's search.
func (f *Finder) LookupFlow(network string, src, dst netip.AddrPort) (path string, uid int, err error) {
	o, err := f.LookupOwner(network, src, dst)
	return o.Path, o.UID, err
}

// LookupOwner is LookupFlow with the owning process's pid too (-1 when
// unknown). The pid is the one this process's /proc shows; for a socket
// of another PID namespace (an exec sandbox) that is its pid as seen from
// the starting namespace.
func (f *Finder) LookupOwner(network string, src, dst netip.AddrPort) (Owner, error) {
	var nw string
	switch {
	case strings.HasPrefix(network, "tcp"):
		nw = "tcp"
	case strings.HasPrefix(network, "udp"):
		nw = "udp"
	default:
		return Owner{PID: -1, UID: -1}, fmt.Errorf("procinfo: lookup %s %s: unsupported network %q; expected tcp or udp", network, src, network)
	}
	if !src.IsValid() {
		return Owner{PID: -1, UID: -1}, fmt.Errorf("procinfo: lookup %s: invalid source address", nw)
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if dst.IsValid() {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	}
	key := cacheKey{nw, src}
	if f.ttl > 0 {
		if e, ok := f.cache.Get(key, f.now()); ok {
			return e, nil
		}
	}
	o, err := f.sys.find(nw, src, dst)
	if err != nil {
		return o, fmt.Errorf("procinfo: lookup %s %s: %w", nw, src, err)
	}
	if f.ttl > 0 {
		f.cache.Put(key, o, f.now().Add(f.ttl))
	}
	return o, nil
}

// Owner is the process holding a local socket.
type Owner struct {
	PID  int
	UID  int
	Path string // executable
}

// Owner returns the process holding the local socket bound to addr, for
// network "tcp" or "udp", uncached: for example the server listening on a
// loopback proxy address. When the socket is found but not its process, the
// UID is set and the error wraps ErrNoProcess.
func (f *Finder) Owner(network string, addr netip.AddrPort) (Owner, error) {
	nw := "tcp"
	if strings.HasPrefix(network, "udp") {
		nw = "udp"
	}
	if !addr.IsValid() {
		return Owner{PID: -1, UID: -1}, fmt.Errorf("procinfo: owner of %s: invalid address", nw)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	o, err := f.sys.owner(nw, addr)
	if err != nil {
		return o, fmt.Errorf("procinfo: owner of %s %s: %w", nw, addr, err)
	}
	return o, nil
}
