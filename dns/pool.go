package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/internal/lru"
)

// Default fake-IP ranges, as Clash and most of its descendants use them.
const (
	DefaultIPv4Range = "198.18.0.0/15"
	DefaultIPv6Range = "fc00::/18"
)

// Pool limits and defaults.
const (
	// MaxPoolSize caps the number of live mappings per address family.
	MaxPoolSize = 65535
	// DefaultPoolTTL is the TTL of fake answers when PoolOptions.TTL is 0.
	DefaultPoolTTL = 10 * time.Second
	// DefaultPoolGrace is how long a mapping stays bound to its name after
	// the last flow to it ended, when PoolOptions.Grace is 0: long enough
	// for an app that reconnects to an address it cached (browsers cache
	// for a minute) to reach the same name.
	DefaultPoolGrace = time.Minute
	// MaxPoolTTL is the largest accepted PoolOptions.TTL.
	MaxPoolTTL = time.Hour
)

// Errors a lookup can fail with. Pool.Lookup reports both as an invalid
// address; the Server tells them apart.
var (
	errPoolExhausted = errors.New("dns: fake-ip pool exhausted: every address is held by an open flow or was in the last grace period")
	errInvalidHost   = errors.New("dns: not a valid host name")
	errFamilyOff     = errors.New("dns: fake-ip pool has no range for this address family")
)

// PoolOptions tune a Pool. The zero value is usable.
type PoolOptions struct {
	// Size is the maximum number of live mappings per address family.
	// 0 means every usable address of the range, capped at MaxPoolSize.
	Size int
	// TTL is the TTL of fake answers (whole seconds, 1s..1h; 0 means
	// DefaultPoolTTL). The least recently used mapping is the one reused
	// when the pool is full, so in normal use a mapping outlives its TTL
	// by far; when names arrive faster than Size per TTL, mappings used
	// within the TTL are reused too (with a warning) rather than leave a new
	// name without an answer.
	TTL time.Duration
	// Grace is how long a mapping stays bound to its name after the last
	// flow holding it (Acquire) was released; 0 means DefaultPoolGrace.
	// While held and during the grace period a mapping is never reused.
	Grace time.Duration
	// CacheFile persists the mappings across restarts: NewPool loads it when
	// it exists and Save writes it. "" means no persistence.
	CacheFile string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives warnings (corrupt cache entries, exhaustion); nil
	// discards them.
	Logger *slog.Logger
}

// Pool maps domain names to fake addresses and back. It is bounded (at most
// Size mappings per family; the least recently used mapping is reused when
// full) and safe for concurrent use. A mapping held by an open flow
// (Acquire, until Release) and for the grace period after is never reused:
// an app that reconnects to an address it cached reaches the same name.
//
// Memory: about 290 bytes per mapping with a 25-byte name, the name
// included (BenchmarkPoolMemory), so a full default pool (65,535 mappings
// per family) costs ~18 MiB per family, ~36 MiB with IPv6 on.
//
// The first three addresses of each range are reserved: the network
// address, the gateway (network+1), which tunsocks gives the TUN device, and
// the DNS address (network+2), where apps send their queries. The DNS
// address cannot be the TUN's own: the kernel would answer a packet to its
// own address itself and never hand it to the TUN. In an IPv4 range the
// broadcast address is not used either.
type Pool struct {
	v4, v6    *family // v6 is nil when disabled
	ttl       time.Duration
	grace     time.Duration
	cacheFile string
	now       func() time.Time
	log       *slog.Logger

	mu            sync.Mutex // guards the families and the warnings
	lastWarn      time.Time
	lastPressure  time.Time
	pressureReuse int64      // mappings reused within their TTL since the last warning
	saveMu        sync.Mutex // serialises Save
}

// family is the pool of one address family.
type family struct {
	prefix  netip.Prefix
	gateway netip.Addr
	dns     netip.Addr // network+2
	first   netip.Addr // first allocatable address (network+3)
	last    netip.Addr // last allocatable address (first+size-1)
	size    int
	next    int // offsets below next have been handed out or loaded
	byHost  map[string]*entry
	byAddr  map[netip.Addr]*entry
	lru     lru.List[*entry] // mappings free to reuse, least recently used last
	grace   lru.List[*entry] // released mappings in their grace period, oldest last
}

// entry is one mapping. It sits in its family's lru list, or, while flows
// hold it, in no list, or, during its grace period, in the grace list.
type entry struct {
	host  string
	addr  netip.Addr
	used  time.Time
	refs  int       // flows holding it (Acquire)
	until time.Time // end of the grace period, while in the grace list
	state entryState
	node  lru.Node[*entry]
}

type entryState uint8

const (
	inLRU entryState = iota
	held
	inGrace
)

// newEntry returns a mapping of host to addr, not yet in any list.
func newEntry(host string, addr netip.Addr, used time.Time) *entry {
	e := &entry{host: host, addr: addr, used: used}
	e.node.Val = e
	return e
}

// NewPool returns a pool over v4 and v6. An invalid (zero) v4 means
// DefaultIPv4Range; an invalid (zero) v6 disables IPv6 fake addresses.
// When opts.CacheFile exists its mappings are loaded; entries that do not
// parse or no longer fit the ranges are skipped and reported to the logger.
// A cache file that exists but cannot be read is an error.
func NewPool(v4, v6 netip.Prefix, opts PoolOptions) (*Pool, error) {
	if !v4.IsValid() {
		v4 = netip.MustParsePrefix(DefaultIPv4Range)
	}
	if !v4.Addr().Is4() {
		return nil, fmt.Errorf("dns: fake-ip IPv4 range %s is not an IPv4 prefix", v4)
	}
	if opts.Size < 0 || opts.Size > MaxPoolSize {
		return nil, fmt.Errorf("dns: fake-ip pool size %d out of range 0..%d", opts.Size, MaxPoolSize)
	}
	ttl := opts.TTL
	if ttl == 0 {
		ttl = DefaultPoolTTL
	}
	if ttl < time.Second || ttl > MaxPoolTTL {
		return nil, fmt.Errorf("dns: fake-ip TTL %s out of range 1s..%s", opts.TTL, MaxPoolTTL)
	}
	if opts.Grace < 0 {
		return nil, fmt.Errorf("dns: fake-ip grace period %s is negative", opts.Grace)
	}
	grace := opts.Grace
	if grace == 0 {
		grace = DefaultPoolGrace
	}
	p := &Pool{
		ttl:       ttl.Truncate(time.Second),
		grace:     grace,
		cacheFile: opts.CacheFile,
		now:       opts.Now,
		log:       opts.Logger,
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if p.v4, err = newFamily(v4, opts.Size); err != nil {
		return nil, err
	}
	if v6.IsValid() {
		if !v6.Addr().Is6() || v6.Addr().Is4In6() {
			return nil, fmt.Errorf("dns: fake-ip IPv6 range %s is not an IPv6 prefix", v6)
		}
		if p.v6, err = newFamily(v6, opts.Size); err != nil {
			return nil, err
		}
	}
	if p.cacheFile != "" {
		if err := p.load(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func newFamily(pfx netip.Prefix, size int) (*family, error) {
	pfx = pfx.Masked()
	hostBits := pfx.Addr().BitLen() - pfx.Bits()
	usable := MaxPoolSize
	if hostBits < 17 { // 2^16 - reserved < MaxPoolSize
		usable = 1<<hostBits - 3 // network, gateway and DNS
		if pfx.Addr().Is4() {
			usable-- // broadcast
		}
	}
	if usable < 1 {
		return nil, fmt.Errorf("dns: fake-ip range %s is too small: no address left after the network, gateway and DNS addresses", pfx)
	}
	if size == 0 {
		size = usable
	}
	if size > usable {
		return nil, fmt.Errorf("dns: fake-ip pool size %d exceeds the %d usable addresses of %s", size, usable, pfx)
	}
	f := &family{
		prefix:  pfx,
		gateway: pfx.Addr().Next(),
		size:    size,
		byHost:  make(map[string]*entry),
		byAddr:  make(map[netip.Addr]*entry),
	}
	f.dns = f.gateway.Next()
	f.first = f.dns.Next()
	f.last = addOffset(f.first, uint64(size-1))
	f.lru.Init()
	f.grace.Init()
	return f, nil
}

// addOffset returns a+off, wrapping silently (callers stay inside a prefix).
func addOffset(a netip.Addr, off uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		v += uint32(off)
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b := a.As16()
	for i := 15; i >= 0 && off != 0; i-- {
		s := uint64(b[i]) + off&0xff
		b[i] = byte(s)
		off = off>>8 + s>>8
	}
	return netip.AddrFrom16(b)
}

// Gateway returns the reserved second address of the IPv4 range, which
// tunsocks gives the TUN device.
func (p *Pool) Gateway() netip.Addr { return p.v4.gateway }

// DNSAddr returns the reserved third address of the IPv4 range, where the
// DNS responder answers (point resolv.conf at it).
func (p *Pool) DNSAddr() netip.Addr { return p.v4.dns }

// DNSAddr6 is DNSAddr for the IPv6 range; invalid when IPv6 is disabled.
func (p *Pool) DNSAddr6() netip.Addr {
	if p.v6 == nil {
		return netip.Addr{}
	}
	return p.v6.dns
}

// Gateway6 is Gateway for the IPv6 range; invalid when IPv6 is disabled.
func (p *Pool) Gateway6() netip.Addr {
	if p.v6 == nil {
		return netip.Addr{}
	}
	return p.v6.gateway
}

// Prefixes returns the pool's ranges; v6 is invalid when IPv6 is disabled.
func (p *Pool) Prefixes() (v4, v6 netip.Prefix) {
	if p.v6 != nil {
		v6 = p.v6.prefix
	}
	return p.v4.prefix, v6
}

// TTL returns the TTL of fake answers.
func (p *Pool) TTL() time.Duration { return p.ttl }

// Contains reports whether a lies in one of the pool's ranges (whether or
// not it is mapped at the moment). IPv4-mapped IPv6 addresses count as IPv4.
func (p *Pool) Contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		return p.v4.prefix.Contains(a)
	}
	return p.v6 != nil && p.v6.prefix.Contains(a)
}

// Lookup returns the fake address of host (IPv6 when ipv6 is set),
// allocating one when host has none. Host names are compared without case and
// without a trailing dot. Lookup returns an invalid address when host is not a
// valid name, when IPv6 is disabled and ipv6 is set, or when the pool is full
// of mappings used within the last TTL.
func (p *Pool) Lookup(host string, ipv6 bool) netip.Addr {
	a, _ := p.lookup(host, ipv6)
	return a
}

// lookup is Lookup with the reason for a failure.
func (p *Pool) lookup(host string, ipv6 bool) (netip.Addr, error) {
	f := p.v4
	if ipv6 {
		if f = p.v6; f == nil {
			return netip.Addr{}, errFamilyOff
		}
	}
	key, ok := canonicalHost(host)
	if !ok {
		return netip.Addr{}, errInvalidHost
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := f.byHost[key]; e != nil {
		f.touch(e, now)
		return e.addr, nil
	}
	e, recent, err := f.allocate(key, now, p.ttl)
	if err != nil {
		if now.Sub(p.lastWarn) >= time.Minute {
			p.lastWarn = now
			p.log.Warn("fake-ip pool exhausted: every address is held by an open flow or in its grace period; consider a larger range",
				"range", f.prefix, "size", f.size, "grace", p.grace)
		}
		return netip.Addr{}, err
	}
	if recent {
		p.pressureReuse++
		if now.Sub(p.lastPressure) >= time.Minute {
			p.log.Warn("fake-ip pool under pressure: reusing addresses handed out within the TTL (an app that cached one may reach another name); consider a larger range or a shorter TTL",
				"range", f.prefix, "size", f.size, "ttl", p.ttl, "reused", p.pressureReuse)
			p.lastPressure = now
			p.pressureReuse = 0
		}
	}
	return e.addr, nil
}

// Reverse returns the name mapped to the fake address a, and marks the
// mapping used.
func (p *Pool) Reverse(a netip.Addr) (host string, ok bool) {
	f, a := p.familyOf(a)
	if f == nil {
		return "", false
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := f.byAddr[a]
	if e == nil {
		return "", false
	}
	f.touch(e, now)
	return e.host, true
}

// Acquire marks the mapping of the fake address a as held by a flow and
// returns its name. A held mapping is never reused; after the last Release
// it stays bound for the grace period. ok is false (and nothing is held)
// when a is not mapped. Every successful Acquire needs one Release.
func (p *Pool) Acquire(a netip.Addr) (host string, ok bool) {
	f, a := p.familyOf(a)
	if f == nil {
		return "", false
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := f.byAddr[a]
	if e == nil {
		return "", false
	}
	if now.After(e.used) {
		e.used = now
	}
	e.refs++
	switch e.state {
	case inLRU:
		f.lru.Remove(&e.node)
	case inGrace:
		f.grace.Remove(&e.node)
	}
	e.state = held
	return e.host, true
}

// Release ends a hold taken by Acquire on a. When no flow holds the
// mapping any more, its grace period starts.
func (p *Pool) Release(a netip.Addr) {
	f, a := p.familyOf(a)
	if f == nil {
		return
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := f.byAddr[a]
	if e == nil || e.refs == 0 {
		return
	}
	if now.After(e.used) {
		e.used = now
	}
	if e.refs--; e.refs == 0 {
		e.state = inGrace
		e.until = now.Add(p.grace)
		f.grace.ToFront(&e.node)
	}
}

// familyOf returns the family whose range holds a (unmapped), or nil.
func (p *Pool) familyOf(a netip.Addr) (*family, netip.Addr) {
	a = a.Unmap()
	f := p.v4
	if a.Is6() {
		f = p.v6
	}
	if f == nil || !f.prefix.Contains(a) {
		return nil, a
	}
	return f, a
}

// Held returns the number of mappings held by flows or in their grace
// period, per family.
func (p *Pool) Held() (v4, v6 int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	count := func(f *family) int {
		n := 0
		for _, e := range f.byAddr {
			if e.state != inLRU {
				n++
			}
		}
		return n
	}
	if p.v6 != nil {
		v6 = count(p.v6)
	}
	return count(p.v4), v6
}

// Len returns the number of live mappings per family.
func (p *Pool) Len() (v4, v6 int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.v6 != nil {
		v6 = len(p.v6.byAddr)
	}
	return len(p.v4.byAddr), v6
}

// Cap returns the most live mappings each family holds (0 for a family
// that is off).
func (p *Pool) Cap() (v4, v6 int) {
	if p.v6 != nil {
		v6 = p.v6.size
	}
	return p.v4.size, v6
}

// touch marks e used at now and, when it is free to reuse, moves it to
// the front of the LRU list.
func (f *family) touch(e *entry, now time.Time) {
	if now.After(e.used) {
		e.used = now
	}
	if e.state == inLRU {
		f.lru.ToFront(&e.node)
	}
}

// endGrace returns the mappings whose grace period is over to the LRU list.
func (f *family) endGrace(now time.Time) {
	for n := f.grace.Oldest(); n != nil && !n.Val.until.After(now); n = f.grace.Oldest() {
		e := n.Val
		f.grace.Remove(n)
		e.state = inLRU
		f.lru.ToFront(&e.node)
	}
}

// allocate maps key to an address: the next never-used one while there is
// one, then the least recently used mapping's among those no flow holds
// and whose grace period is over. recent reports that the reused mapping
// was used within ttl (a client may still have it cached).
func (f *family) allocate(key string, now time.Time, ttl time.Duration) (e *entry, recent bool, err error) {
	// Skip addresses a cache file gave out of order; bounded by size.
	for f.next < f.size {
		a := addOffset(f.first, uint64(f.next))
		f.next++
		if f.byAddr[a] == nil {
			e := newEntry(key, a, now)
			f.byHost[key] = e
			f.byAddr[a] = e
			f.lru.ToFront(&e.node)
			return e, false, nil
		}
	}
	f.endGrace(now)
	n := f.lru.Oldest()
	if n == nil {
		return nil, false, errPoolExhausted
	}
	old := n.Val
	recent = now.Sub(old.used) < ttl
	delete(f.byHost, old.host)
	old.host = key
	old.used = now
	f.byHost[key] = old
	f.lru.ToFront(&old.node)
	return old, recent, nil
}

// canonicalHost returns host in lower case without a trailing dot, and
// whether it is a name the pool accepts: 1..253 bytes of printable ASCII other
// than space, in dot-separated labels of 1..63 bytes. It does not allocate
// when host is already canonical.
func canonicalHost(host string) (string, bool) {
	host = trimDot(host)
	if !validHost(host) {
		return "", false
	}
	if isLowerCanonical(host) {
		return host, true
	}
	b := []byte(host)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b), true
}

func trimDot(s string) string {
	if len(s) > 1 && s[len(s)-1] == '.' {
		return s[:len(s)-1]
	}
	return s
}

func isLowerCanonical(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

func validHost(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c <= ' ' || c >= 0x7f:
			return false
		default:
			if label++; label > 63 {
				return false
			}
		}
	}
	return label > 0
}
