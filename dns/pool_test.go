package dns

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a manual clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func mustPool(t testing.TB, v4, v6 string, opts PoolOptions) *Pool {
	t.Helper()
	var p4, p6 netip.Prefix
	if v4 != "" {
		p4 = netip.MustParsePrefix(v4)
	}
	if v6 != "" {
		p6 = netip.MustParsePrefix(v6)
	}
	p, err := NewPool(p4, p6, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolDefaultsAndReserved(t *testing.T) {
	p := mustPool(t, "", DefaultIPv6Range, PoolOptions{})
	v4, v6 := p.Prefixes()
	if v4.String() != DefaultIPv4Range || v6.String() != DefaultIPv6Range {
		t.Fatalf("prefixes %s %s", v4, v6)
	}
	if g := p.Gateway(); g != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("gateway %s", g)
	}
	if g := p.Gateway6(); g != netip.MustParseAddr("fc00::1") {
		t.Fatalf("gateway6 %s", g)
	}
	if p.TTL() != DefaultPoolTTL {
		t.Fatalf("ttl %s", p.TTL())
	}
	if a := p.Lookup("example.com", false); a != netip.MustParseAddr("198.18.0.3") {
		t.Fatalf("first v4 address %s, want 198.18.0.3 (network, gateway and DNS reserved)", a)
	}
	if p.DNSAddr() != netip.MustParseAddr("198.18.0.2") || p.DNSAddr6() != netip.MustParseAddr("fc00::2") {
		t.Fatalf("DNS addresses %s %s", p.DNSAddr(), p.DNSAddr6())
	}
	if a := p.Lookup("example.com", true); a != netip.MustParseAddr("fc00::3") {
		t.Fatalf("first v6 address %s", a)
	}
	if a := p.Lookup("two.example", false); a != netip.MustParseAddr("198.18.0.4") {
		t.Fatalf("second v4 address %s", a)
	}
	for _, tc := range []struct {
		a    string
		want bool
	}{
		{"198.18.0.0", true}, {"198.19.255.255", true}, {"198.20.0.0", false}, {"198.17.255.255", false},
		{"::ffff:198.18.0.9", true}, {"fc00::5", true}, {"fc00:4000::", false}, {"10.0.0.1", false},
	} {
		if got := p.Contains(netip.MustParseAddr(tc.a)); got != tc.want {
			t.Errorf("Contains(%s) = %v", tc.a, got)
		}
	}
}

func TestPoolBidirectional(t *testing.T) {
	p := mustPool(t, "10.64.0.0/16", "fd00:1::/64", PoolOptions{})
	a := p.Lookup("Example.COM.", false)
	if !a.IsValid() {
		t.Fatal("no address")
	}
	for _, h := range []string{"example.com", "EXAMPLE.com", "example.com."} {
		if b := p.Lookup(h, false); b != a {
			t.Fatalf("Lookup(%q) = %s, want %s", h, b, a)
		}
	}
	if h, ok := p.Reverse(a); !ok || h != "example.com" {
		t.Fatalf("Reverse(%s) = %q %v", a, h, ok)
	}
	if h, ok := p.Reverse(netip.AddrFrom16(a.As16())); !ok || h != "example.com" {
		t.Fatalf("Reverse(4in6 %s) = %q %v", a, h, ok)
	}
	a6 := p.Lookup("example.com", true)
	if !a6.Is6() || a6 == a {
		t.Fatalf("v6 address %s", a6)
	}
	if h, ok := p.Reverse(a6); !ok || h != "example.com" {
		t.Fatalf("Reverse(%s) = %q %v", a6, h, ok)
	}
	b := p.Lookup("other.example", false)
	if b == a || !b.IsValid() {
		t.Fatalf("second name got %s", b)
	}
	for _, a := range []string{"10.64.0.200", "10.64.0.1", "10.64.0.0", "8.8.8.8", "fd00:1::99", "fe80::1"} {
		if h, ok := p.Reverse(netip.MustParseAddr(a)); ok {
			t.Errorf("Reverse(%s) = %q, want nothing", a, h)
		}
	}
	if n4, n6 := p.Len(); n4 != 2 || n6 != 1 {
		t.Fatalf("Len = %d %d", n4, n6)
	}
}

func TestPoolInvalidNames(t *testing.T) {
	p := mustPool(t, "", "", PoolOptions{})
	for _, h := range []string{"", ".", "a..b", ".a", "a b", "tab\there", "ü.example", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127) + "com", "nul\x00"} {
		if a := p.Lookup(h, false); a.IsValid() {
			t.Errorf("Lookup(%q) = %s, want invalid", h, a)
		}
	}
	if a := p.Lookup("example.com", true); a.IsValid() {
		t.Fatalf("IPv6 disabled but Lookup gave %s", a)
	}
	if p.Gateway6().IsValid() || p.Contains(netip.MustParseAddr("fc00::2")) {
		t.Fatal("IPv6 disabled but the pool claims a v6 range")
	}
	for _, h := range []string{"_dmarc.example.com", "xn--bcher-kva.example", "a-b.c", strings.Repeat("a", 63) + ".com"} {
		if a := p.Lookup(h, false); !a.IsValid() {
			t.Errorf("Lookup(%q) refused a valid name", h)
		}
	}
}

func TestPoolExhaustionAndLRU(t *testing.T) {
	clk := newClock()
	logs := &bytes.Buffer{}
	p := mustPool(t, "", "", PoolOptions{Size: 3, TTL: 5 * time.Second, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	a := p.Lookup("a", false)
	clk.Add(time.Second)
	b := p.Lookup("b", false)
	clk.Add(time.Second)
	c := p.Lookup("c", false)
	if !a.IsValid() || !b.IsValid() || !c.IsValid() {
		t.Fatal("allocation failed below the size")
	}
	// Full, and every mapping was used within the TTL: the least recently
	// used one (a) is reused rather than leave d unanswered, with a warning.
	if d := p.Lookup("d", false); d != a {
		t.Fatalf("d got %s while the pool was full of fresh mappings, want a's %s", d, a)
	}
	if !strings.Contains(logs.String(), "fake-ip pool under pressure") {
		t.Errorf("no warning for reuse within the TTL:\n%s", logs)
	}
	clk.Add(10 * time.Second) // all three are now older than the TTL
	// Touch d (Lookup) and b (Reverse): c is the least recently used.
	p.Lookup("d", false)
	p.Reverse(b)
	e := p.Lookup("e", false)
	if e != c {
		t.Fatalf("e got %s, want c's recycled %s", e, c)
	}
	if h, _ := p.Reverse(c); h != "e" {
		t.Fatalf("Reverse(%s) = %q after reuse, want e", c, h)
	}
	if n, _ := p.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3 (bounded)", n)
	}
}

func TestPoolHeldMappingsAreNotReused(t *testing.T) {
	// A flow holds a's mapping: however many names come, a keeps its
	// address while held and for the grace period after; the other
	// mappings are reused. When every mapping is held, a new name has no
	// address (the one case left for SERVFAIL).
	clk := newClock()
	p := mustPool(t, "", "", PoolOptions{Size: 3, TTL: 5 * time.Second, Grace: 30 * time.Second, Now: clk.Now})
	a := p.Lookup("a.example", false)
	if h, ok := p.Acquire(a); !ok || h != "a.example" {
		t.Fatalf("Acquire(%s) = %q, %v", a, h, ok)
	}
	for i := range 20 {
		clk.Add(10 * time.Second)
		if x := p.Lookup(fmt.Sprintf("n%d", i), false); !x.IsValid() || x == a {
			t.Fatalf("name %d got %s (a holds %s)", i, x, a)
		}
	}
	if h, _ := p.Reverse(a); h != "a.example" {
		t.Fatalf("held address now names %q", h)
	}
	// Released: bound through the grace period, then reusable.
	p.Release(a)
	clk.Add(29 * time.Second)
	for i := range 5 {
		if x := p.Lookup(fmt.Sprintf("g%d", i), false); x == a {
			t.Fatalf("name g%d took a's address during its grace period", i)
		}
	}
	clk.Add(2 * time.Second)
	reused := false
	for i := range 3 {
		if p.Lookup(fmt.Sprintf("after%d", i), false) == a {
			reused = true
		}
	}
	if !reused {
		t.Error("a's address was never reused after its grace period")
	}
	// Every mapping held: no address for a new name.
	for _, n := range []string{"h0", "h1", "h2"} {
		if _, ok := p.Acquire(p.Lookup(n, false)); !ok {
			t.Fatalf("Acquire %s failed", n)
		}
	}
	if x, err := p.lookup("one-too-many", false); x.IsValid() || !errors.Is(err, errPoolExhausted) {
		t.Fatalf("with every mapping held: %s, %v; want errPoolExhausted", x, err)
	}
	if v4, _ := p.Held(); v4 != 3 {
		t.Errorf("Held = %d, want 3", v4)
	}
	// Holds nest: two Acquires need two Releases.
	h0 := p.Lookup("h0", false)
	p.Acquire(h0)
	p.Release(h0)
	clk.Add(time.Hour)
	if x := p.Lookup("x", false); x == h0 || x.IsValid() {
		t.Fatalf("x got %s while h0 is still held once", x)
	}
	p.Release(h0)
	clk.Add(time.Hour)
	if x := p.Lookup("x", false); x != h0 {
		t.Fatalf("x got %s, want the released h0's %s", x, h0)
	}
	// Unmapped and foreign addresses are not held.
	if _, ok := p.Acquire(netip.MustParseAddr("8.8.8.8")); ok {
		t.Error("Acquire of a foreign address succeeded")
	}
	p.Release(netip.MustParseAddr("8.8.8.8"))
}

func TestPoolHeldAddressSurvives100000Names(t *testing.T) {
	// The proof: a held connection's fake IP is not reused after
	// 100,000 other names, with the clock moving (TTL and grace long past)
	// and standing still (every name within one TTL), over the default
	// range and size.
	for _, step := range []time.Duration{0, time.Second} {
		clk := newClock()
		p := mustPool(t, "", "", PoolOptions{Now: clk.Now})
		held := p.Lookup("held.example", false)
		if _, ok := p.Acquire(held); !ok {
			t.Fatal("Acquire failed")
		}
		for i := range 100_000 {
			clk.Add(step)
			x := p.Lookup(fmt.Sprintf("name%d.example", i), false)
			if !x.IsValid() {
				t.Fatalf("step %v: name %d got no address", step, i)
			}
			if x == held {
				t.Fatalf("step %v: name %d got the held address %s", step, i, held)
			}
		}
		if h, _ := p.Reverse(held); h != "held.example" {
			t.Fatalf("step %v: the held address now names %q", step, h)
		}
		if x := p.Lookup("held.example", false); x != held {
			t.Fatalf("step %v: held.example now maps to %s, want %s", step, x, held)
		}
	}
}

func TestPoolSaveKeepsHeldMappings(t *testing.T) {
	// Mappings held by flows or in their grace period are saved too, as
	// the most recently used.
	clk := newClock()
	file := filepath.Join(t.TempDir(), "fakeip.cache")
	p := mustPool(t, "", "", PoolOptions{Now: clk.Now, CacheFile: file})
	free := p.Lookup("free.example", false)
	clk.Add(time.Second)
	grace := p.Lookup("grace.example", false)
	clk.Add(time.Second)
	held := p.Lookup("held.example", false)
	p.Acquire(grace)
	p.Release(grace)
	p.Acquire(held)
	if err := p.Save(); err != nil {
		t.Fatal(err)
	}
	q := mustPool(t, "", "", PoolOptions{Now: clk.Now, CacheFile: file})
	for host, a := range map[string]netip.Addr{"free.example": free, "grace.example": grace, "held.example": held} {
		if got, _ := q.Reverse(a); got != host {
			t.Errorf("after a restart %s names %q, want %q", a, got, host)
		}
	}
}

func TestPoolSizeZeroIsWholeRange(t *testing.T) {
	clk := newClock()
	p := mustPool(t, "192.0.2.0/29", "", PoolOptions{Now: clk.Now, TTL: time.Second})
	// /29: 8 addresses minus network, gateway, DNS and broadcast = 4.
	seen := map[netip.Addr]bool{}
	for i := range 4 {
		a := p.Lookup(fmt.Sprintf("h%d", i), false)
		if !a.IsValid() || seen[a] {
			t.Fatalf("lookup %d gave %s", i, a)
		}
		seen[a] = true
	}
	for _, bad := range []string{"192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.7"} {
		if seen[netip.MustParseAddr(bad)] {
			t.Fatalf("reserved address %s handed out", bad)
		}
	}
	// A 5th name reuses the least recently used mapping's address.
	if a := p.Lookup("h4", false); !seen[a] {
		t.Fatalf("5th name got %s, want one of the 4 addresses of a /29", a)
	}
}

func TestNewPoolErrors(t *testing.T) {
	for _, tc := range []struct {
		v4, v6 string
		opts   PoolOptions
		want   string
	}{
		{"fc00::/18", "", PoolOptions{}, "not an IPv4 prefix"},
		{"", "10.0.0.0/8", PoolOptions{}, "not an IPv6 prefix"},
		{"10.0.0.0/31", "", PoolOptions{}, "too small"},
		{"10.0.0.0/30", "fc00::/127", PoolOptions{}, "too small"},
		{"10.0.0.0/24", "", PoolOptions{Size: 300}, "exceeds the 252 usable"},
		{"", "", PoolOptions{Size: -1}, "out of range"},
		{"", "", PoolOptions{Size: MaxPoolSize + 1}, "out of range"},
		{"", "", PoolOptions{TTL: 500 * time.Millisecond}, "TTL"},
		{"", "", PoolOptions{TTL: 2 * time.Hour}, "TTL"},
		{"", "", PoolOptions{CacheFile: t.TempDir()}, "fake-ip cache"},
	} {
		var p4, p6 netip.Prefix
		if tc.v4 != "" {
			p4 = netip.MustParsePrefix(tc.v4)
		}
		if tc.v6 != "" {
			p6 = netip.MustParsePrefix(tc.v6)
		}
		_, err := NewPool(p4, p6, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewPool(%q, %q, %+v) = %v, want error containing %q", tc.v4, tc.v6, tc.opts, err, tc.want)
		}
	}
	if _, err := NewPool(netip.MustParsePrefix("10.0.0.0/29"), netip.Prefix{}, PoolOptions{}); err != nil {
		t.Fatalf("a /29 has four usable addresses: %v", err)
	}
}

func TestPoolRestartWithCacheFile(t *testing.T) {
	clk := newClock()
	file := filepath.Join(t.TempDir(), "fakeip.cache")
	opts := PoolOptions{Size: 4, TTL: 2 * time.Second, CacheFile: file, Now: clk.Now}
	p := mustPool(t, "", DefaultIPv6Range, opts)
	want := map[string]netip.Addr{}
	for _, h := range []string{"one.example", "two.example", "three.example"} {
		want[h] = p.Lookup(h, false)
		clk.Add(time.Second)
	}
	want6 := p.Lookup("six.example", true)
	if err := p.Save(); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(file + ".tmp*"); len(m) != 0 {
		t.Fatalf("temporary files left behind: %v", m)
	}

	q := mustPool(t, "", DefaultIPv6Range, opts)
	for h, a := range want {
		if got, ok := q.Reverse(a); !ok || got != h {
			t.Fatalf("after restart Reverse(%s) = %q %v, want %q", a, got, ok, h)
		}
	}
	clk.Add(10 * time.Second)
	for h, a := range want {
		if got := q.Lookup(h, false); got != a {
			t.Fatalf("after restart Lookup(%q) = %s, want %s", h, got, a)
		}
	}
	if got := q.Lookup("six.example", true); got != want6 {
		t.Fatalf("after restart v6 Lookup = %s, want %s", got, want6)
	}
	// A new name does not collide with a restored address.
	n := q.Lookup("four.example", false)
	for h, a := range want {
		if n == a {
			t.Fatalf("new name got %s, which belongs to %s", n, h)
		}
	}
	if !n.IsValid() {
		t.Fatal("no address for a new name")
	}
}

func TestPoolRestartKeepsLRUOrder(t *testing.T) {
	clk := newClock()
	file := filepath.Join(t.TempDir(), "cache")
	opts := PoolOptions{Size: 2, TTL: time.Second, CacheFile: file, Now: clk.Now}
	p := mustPool(t, "", "", opts)
	a := p.Lookup("a", false)
	clk.Add(2 * time.Second)
	b := p.Lookup("b", false)
	clk.Add(2 * time.Second)
	p.Lookup("a", false) // b is now the least recently used
	if err := p.Save(); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second)
	q := mustPool(t, "", "", opts)
	if c := q.Lookup("c", false); c != b {
		t.Fatalf("c got %s, want b's %s (LRU order lost across restart; a is %s)", c, b, a)
	}
}

func TestPoolCorruptCacheFile(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	file := filepath.Join(dir, "cache")
	content := strings.Join([]string{
		cacheHeader,
		"198.18.0.3 good.example 1700000000",
		"198.18.0.4 Mixed.Case.Example. 1700000000",
		"garbage",
		"198.18.0.5 too many fields 1",
		"300.1.1.1 badaddr.example 1",
		"198.18.0.2 dnsaddr.example 1",      // reserved
		"10.0.0.5 outside.example 1",        // not in the pool
		"198.18.0.6 bad..name 1",            // invalid name
		"198.18.0.7 notime.example x",       // bad time
		"198.18.0.3 dupaddr.example 1",      // duplicate address
		"198.18.0.8 good.example 1",         // duplicate name
		"fc00::2 v6disabled.example 1",      // no v6 range
		"198.18.0.99 beyond-size.example 1", // offset >= Size
		"\x00\xff\xfe binary",
		"",
	}, "\n")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	p, err := NewPool(netip.Prefix{}, netip.Prefix{}, PoolOptions{Size: 10, CacheFile: file, Now: clk.Now, Logger: log})
	if err != nil {
		t.Fatalf("corrupt entries must not fail NewPool: %v", err)
	}
	if n, _ := p.Len(); n != 2 {
		t.Fatalf("loaded %d mappings, want 2", n)
	}
	if h, _ := p.Reverse(netip.MustParseAddr("198.18.0.3")); h != "good.example" {
		t.Fatalf("198.18.0.3 -> %q", h)
	}
	if h, _ := p.Reverse(netip.MustParseAddr("198.18.0.4")); h != "mixed.case.example" {
		t.Fatalf("198.18.0.4 -> %q", h)
	}
	if !strings.Contains(logs.String(), "skipped=12") {
		t.Fatalf("corrupt entries not reported as 12 skipped: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "line 4") {
		t.Fatalf("report does not name the first bad line: %s", logs.String())
	}

	// Pure garbage: an empty pool, no error.
	if err := os.WriteFile(file, []byte("\x00\x01\x02\xff\n\xfe\xfd"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err = NewPool(netip.Prefix{}, netip.Prefix{}, PoolOptions{CacheFile: file, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := p.Len(); n != 0 {
		t.Fatalf("garbage file gave %d mappings", n)
	}
	// Save replaces the garbage with a good file.
	p.Lookup("x.example", false)
	if err := p.Save(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	if !strings.HasPrefix(string(data), cacheHeader+"\n198.18.0.3 x.example ") {
		t.Fatalf("saved file:\n%s", data)
	}
}

func TestPoolSaveErrors(t *testing.T) {
	p := mustPool(t, "", "", PoolOptions{})
	if err := p.Save(); err != nil {
		t.Fatalf("Save without a cache file: %v", err)
	}
	file := filepath.Join(t.TempDir(), "missing-dir", "cache")
	p = mustPool(t, "", "", PoolOptions{CacheFile: file})
	if err := p.Save(); err == nil || !strings.Contains(err.Error(), "missing-dir") {
		t.Fatalf("Save into a missing directory: %v", err)
	}
}

func TestPoolConcurrent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cache")
	p := mustPool(t, "", DefaultIPv6Range, PoolOptions{Size: 50, TTL: time.Second, CacheFile: file})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				h := fmt.Sprintf("h%d.example", (g*7+i)%80)
				a := p.Lookup(h, i%2 == 0)
				if a.IsValid() {
					p.Reverse(a)
					if !p.Contains(a) {
						t.Errorf("%s outside the pool", a)
						return
					}
				}
				if i%100 == 0 {
					if err := p.Save(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	n4, n6 := p.Len()
	if n4 > 50 || n6 > 50 {
		t.Fatalf("pool grew past its size: %d %d", n4, n6)
	}
	// Every live mapping is consistent both ways.
	for _, f := range []*family{p.v4, p.v6} {
		for h, e := range f.byHost {
			if f.byAddr[e.addr] != e || e.host != h {
				t.Fatalf("inconsistent mapping %s <-> %s", h, e.addr)
			}
		}
		if len(f.byHost) != len(f.byAddr) {
			t.Fatalf("maps differ in size: %d %d", len(f.byHost), len(f.byAddr))
		}
	}
}

func TestAddOffset(t *testing.T) {
	for _, tc := range []struct {
		a    string
		off  uint64
		want string
	}{
		{"10.0.0.255", 1, "10.0.1.0"},
		{"198.18.0.2", 65534, "198.19.0.0"},
		{"fc00::ffff", 1, "fc00::1:0"},
		{"fc00::ff:ffff:ffff:ffff", 1, "fc00::100:0:0:0"}, {"fc00::ffff:ffff:ffff:ffff", 1, "fc00:0:0:1::"},
	} {
		if got := addOffset(netip.MustParseAddr(tc.a), tc.off); got != netip.MustParseAddr(tc.want) {
			t.Errorf("addOffset(%s, %d) = %s, want %s", tc.a, tc.off, got, tc.want)
		}
	}
}
