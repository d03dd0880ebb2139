package dns

import (
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/internal/lru"
)

// DefaultRealNames is the number of addresses a RealNames remembers when
// given no size.
const DefaultRealNames = 4096

// realNameMinTTL is how long a learnt name is kept at least, whatever the
// answer's TTL: an app may connect a while after its lookup.
const realNameMinTTL = time.Minute

// RealNames remembers which name a real address was last answered for, so
// that a flow to an address a DIRECT or filtered name resolved to is still
// known by that name and the name's rule applies, as it does for fake IPs.
// Only real answers belong here: the Server teaches it the A and AAAA
// records of the answers it forwards, never the fake ones it makes up, and
// addresses inside the fake-IP pool's ranges are never learnt. It is
// bounded (least recently used forgotten first) and safe for concurrent
// use.
type RealNames struct {
	pool  *Pool // its ranges are never learnt; may be nil
	names *lru.Cache[netip.Addr, string]
	now   func() time.Time
}

// NewRealNames returns a table of at most size addresses (0 means
// DefaultRealNames) that never learns an address of pool (nil: none).
func NewRealNames(size int, pool *Pool) *RealNames {
	if size <= 0 {
		size = DefaultRealNames
	}
	return &RealNames{pool: pool, names: lru.NewCache[netip.Addr, string](size), now: time.Now}
}

// Lookup returns the name a was last answered for, if that answer is still
// fresh.
func (r *RealNames) Lookup(a netip.Addr) (string, bool) {
	if r == nil {
		return "", false
	}
	return r.names.Get(a.Unmap(), r.now())
}

// Len returns the number of addresses remembered.
func (r *RealNames) Len() int { return r.names.Len() }

// learn records the A and AAAA records of a forwarded answer, each for its
// TTL but at least a minute.
func (r *RealNames) learn(m *dnsmessage.Message) {
	if r == nil {
		return
	}
	now := r.now()
	for _, rr := range m.Answers {
		var ip netip.Addr
		switch b := rr.Body.(type) {
		case *dnsmessage.AResource:
			ip = netip.AddrFrom4(b.A)
		case *dnsmessage.AAAAResource:
			ip = netip.AddrFrom16(b.AAAA).Unmap()
		default:
			continue
		}
		if r.pool != nil && r.pool.Contains(ip) {
			continue // a fake address is no real name's
		}
		name := strings.TrimSuffix(strings.ToLower(rr.Header.Name.String()), ".")
		ttl := max(time.Duration(rr.Header.TTL)*time.Second, realNameMinTTL)
		r.names.Put(ip, name, now.Add(ttl))
	}
}
