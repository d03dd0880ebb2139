package dns

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestRealNamesLearnOnlyRealAnswers: forwarded answers (DIRECT, filtered,
// through the proxy, and from the cache) teach the table their addresses;
// fake answers never do, and neither does a forwarded address inside the
// fake-IP ranges.
func TestRealNamesLearnOnlyRealAnswers(t *testing.T) {
	var names *RealNames
	e := newEnv(t, false, func(c *Config) {
		names = NewRealNames(0, c.Pool)
		c.Names = names
	})
	names.now = e.clk.Now
	fake := e.ask(t, 1, "www.example.com.", dnsmessage.TypeA)
	fakeIP := netip.AddrFrom4(fake.Answers[0].Body.(*dnsmessage.AResource).A)
	if name, ok := names.Lookup(fakeIP); ok {
		t.Errorf("the fake answer %s was learnt as %q", fakeIP, name)
	}
	e.ask(t, 2, "a.direct.test.", dnsmessage.TypeA)
	if name, ok := names.Lookup(netip.MustParseAddr("192.0.2.10")); !ok || name != "a.direct.test" {
		t.Errorf("DIRECT answer: Lookup = %q, %v", name, ok)
	}
	e.ask(t, 3, "b.direct.test.", dnsmessage.TypeAAAA)
	if name, ok := names.Lookup(netip.MustParseAddr("2001:db8::1")); !ok || name != "b.direct.test" {
		t.Errorf("DIRECT AAAA answer: Lookup = %q, %v", name, ok)
	}
	e.ask(t, 4, "c.proxy.test.", dnsmessage.TypeA)
	if name, ok := names.Lookup(netip.MustParseAddr("203.0.113.7")); !ok || name != "c.proxy.test" {
		t.Errorf("proxied real answer: Lookup = %q, %v", name, ok)
	}
	// The most recent answer wins, and one from the cache counts too.
	e.ask(t, 5, "z.direct.test.", dnsmessage.TypeA)
	if name, _ := names.Lookup(netip.MustParseAddr("192.0.2.10")); name != "z.direct.test" {
		t.Errorf("later DIRECT answer: Lookup = %q", name)
	}
	calls := len(e.direct.calls())
	e.ask(t, 6, "a.direct.test.", dnsmessage.TypeA)
	if len(e.direct.calls()) != calls {
		t.Fatal("the second a.direct.test query was not answered from the cache")
	}
	if name, _ := names.Lookup(netip.MustParseAddr("192.0.2.10")); name != "a.direct.test" {
		t.Errorf("cached DIRECT answer: Lookup = %q", name)
	}
	if names.Len() != 3 {
		t.Errorf("Len = %d, want 3 (no fake address)", names.Len())
	}
	// Learnt names expire after their TTL (300 s here), at least a minute.
	e.clk.Add(301 * time.Second)
	if _, ok := names.Lookup(netip.MustParseAddr("2001:db8::1")); ok {
		t.Error("a name outlived its TTL")
	}
}

func TestRealNamesSkipPoolAndBounded(t *testing.T) {
	pool := mustPool(t, "", "", PoolOptions{})
	names := NewRealNames(2, pool)
	a := func(name, ip string) dnsmessage.Resource {
		return dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 1},
			Body: &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()}}
	}
	names.learn(&dnsmessage.Message{Answers: []dnsmessage.Resource{
		a("Fake.Example.", "198.18.0.7"), // inside the pool's range: a nameserver pointing back at us
		a("one.example.", "192.0.2.1"),
		a("two.example.", "192.0.2.2"),
		a("three.example.", "192.0.2.3"),
	}})
	if _, ok := names.Lookup(netip.MustParseAddr("198.18.0.7")); ok {
		t.Error("an address of the fake-IP pool was learnt")
	}
	if names.Len() != 2 {
		t.Errorf("Len = %d, want the bound 2", names.Len())
	}
	if _, ok := names.Lookup(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("the least recently used name survived")
	}
	if name, ok := names.Lookup(netip.MustParseAddr("192.0.2.3")); !ok || name != "three.example" {
		t.Errorf("Lookup = %q, %v", name, ok)
	}
	var nilNames *RealNames
	if _, ok := nilNames.Lookup(netip.MustParseAddr("192.0.2.3")); ok {
		t.Error("a nil table knows a name")
	}
}

// TestProxyForPicksTheNamesResolver: a non-address query for a proxied
// name goes to the resolver ProxyFor picks for that name; nil from it
// means SERVFAIL, and never the Direct resolver.
func TestProxyForPicksTheNamesResolver(t *testing.T) {
	corp := &fakeResolver{name: "corp", answer: answerWith(60, "203.0.113.9")}
	e := newEnv(t, false, func(c *Config) {
		c.Proxy = nil
		c.ProxyFor = func(host string) Resolver {
			if host == "rejected.example" {
				return nil
			}
			return corp
		}
	})
	m := e.ask(t, 1, "www.example.com.", dnsmessage.TypeTXT)
	if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 || len(corp.calls()) != 1 {
		t.Fatalf("TXT for a proxied name: %v, %d answers; corp asked %d times", m.Header.RCode, len(m.Answers), len(corp.calls()))
	}
	if m := e.ask(t, 2, "rejected.example.", dnsmessage.TypeMX); m.Header.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("MX for a name without a proxy resolver: %v, want SERVFAIL", m.Header.RCode)
	}
	e.assertNoLeak(t)
	if len(e.proxy.calls()) != 0 {
		t.Error("the fixed Proxy resolver was asked although ProxyFor is set")
	}
}

// TestInterceptClaimsAndAnswers: the hook claims port 53 of the pool's DNS
// addresses (or of any address when hijacking) and answers over UDP and
// TCP.
func TestInterceptClaimsAndAnswers(t *testing.T) {
	e := newEnv(t, false, nil)
	h := NewIntercept(e.srv, false)
	hj := NewIntercept(e.srv, true)
	for _, tc := range []struct {
		dst          string
		plain, hijak bool
	}{
		{"198.18.0.2:53", true, true},
		{"[::ffff:198.18.0.2]:53", true, true},
		{"[fc00::2]:53", true, true},
		{"198.18.0.2:5353", false, false},
		{"1.1.1.1:53", false, true},
	} {
		ap := netip.MustParseAddrPort(tc.dst)
		if h.Intercept(ap) != tc.plain || hj.Intercept(ap) != tc.hijak {
			t.Errorf("%s: Intercept = %v, with hijack %v; want %v, %v", tc.dst, h.Intercept(ap), hj.Intercept(ap), tc.plain, tc.hijak)
		}
	}
	resp, err := h.Handle(context.Background(), query(t, 9, "x.example.", dnsmessage.TypeA, 0))
	if err != nil || unpack(t, resp).Header.ID != 9 {
		t.Fatalf("Handle: %v", err)
	}
	client, server := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- h.ServeStream(context.Background(), server) }()
	q := query(t, 10, "x.example.", dnsmessage.TypeA, 0)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write(append([]byte{byte(len(q) >> 8), byte(len(q))}, q...)); err != nil {
		t.Fatal(err)
	}
	var hdr [2]byte
	if _, err := client.Read(hdr[:]); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, int(hdr[0])<<8|int(hdr[1]))
	if _, err := readFull(client, b); err != nil || unpack(t, b).Header.ID != 10 {
		t.Fatalf("answer over TCP: %v", err)
	}
	client.Close()
	if err := testenv.Recv(t, done, "the server's end"); err != nil {
		t.Errorf("ServeStream: %v", err)
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
