package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// query builds a query for name and type with ID id; edns > 0 adds an OPT
// record offering that UDP size.
func query(t testing.TB, id uint16, name string, typ dnsmessage.Type, edns int) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if edns > 0 {
		if err := b.StartAdditionals(); err != nil {
			t.Fatal(err)
		}
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(edns, 0, false)
		if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func unpack(t testing.TB, resp []byte) *dnsmessage.Message {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpack response: %v", err)
	}
	return &m
}

// seen is one query a fakeResolver received.
type seen struct {
	name string
	typ  dnsmessage.Type
}

// fakeResolver records every query and answers with answer(query).
type fakeResolver struct {
	name   string
	mu     sync.Mutex
	seen   []seen
	answer func(q []byte) ([]byte, error)
}

func (f *fakeResolver) Exchange(ctx context.Context, q []byte) ([]byte, error) {
	var p dnsmessage.Parser
	if _, err := p.Start(q); err != nil {
		return nil, err
	}
	qq, err := p.Question()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.seen = append(f.seen, seen{strings.ToLower(qq.Name.String()), qq.Type})
	f.mu.Unlock()
	return f.answer(q)
}

func (f *fakeResolver) calls() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

// answerWith returns an answer func that replies to any query with one
// record of the query's type (A, AAAA, MX, TXT; others get an A-less
// NOERROR) carrying ttl.
func answerWith(ttl uint32, addr string) func(q []byte) ([]byte, error) {
	return func(q []byte) ([]byte, error) {
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil {
			return nil, err
		}
		qq := m.Questions[0]
		m.Header.Response = true
		m.Header.RecursionAvailable = true
		m.Additionals = nil
		rh := dnsmessage.ResourceHeader{Name: qq.Name, Type: qq.Type, Class: dnsmessage.ClassINET, TTL: ttl}
		switch qq.Type {
		case dnsmessage.TypeA:
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AResource{A: netip.MustParseAddr(addr).As4()}})
		case dnsmessage.TypeAAAA:
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8::1").As16()}})
		case dnsmessage.TypeMX:
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.MXResource{Pref: 10, MX: dnsmessage.MustNewName("mx." + qq.Name.String())}})
		case dnsmessage.TypeTXT:
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.TXTResource{TXT: []string{"v=spf1 -all"}}})
		}
		return m.Pack()
	}
}

type env struct {
	srv           *Server
	pool          *Pool
	direct, proxy *fakeResolver
	clk           *clock
}

// newEnv builds a server with a pool (v6 enabled unless noV6), the filter
// "+.lan", and a decider: *.direct.test -> Direct, *.proxy.test -> Proxy,
// everything else -> FakeIP.
func newEnv(t testing.TB, noV6 bool, mod func(*Config)) *env {
	t.Helper()
	e := &env{clk: newClock()}
	v6 := DefaultIPv6Range
	if noV6 {
		v6 = ""
	}
	e.pool = mustPool(t, "", v6, PoolOptions{TTL: 3 * time.Second, Now: e.clk.Now})
	e.direct = &fakeResolver{name: "direct", answer: answerWith(300, "192.0.2.10")}
	e.proxy = &fakeResolver{name: "proxy", answer: answerWith(60, "203.0.113.7")}
	filter, err := NewFilter([]string{"+.lan"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Pool:   e.pool,
		Filter: filter,
		Direct: e.direct,
		Proxy:  e.proxy,
		Decide: func(host string) Route {
			switch {
			case strings.HasSuffix(host, ".direct.test"):
				return RouteDirect
			case strings.HasSuffix(host, ".proxy.test"):
				return RouteProxy
			}
			return RouteFakeIP
		},
		Now: e.clk.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	e.srv, err = NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) ask(t testing.TB, id uint16, name string, typ dnsmessage.Type) *dnsmessage.Message {
	t.Helper()
	resp, err := e.srv.Handle(context.Background(), query(t, id, name, typ, 0))
	if resp == nil {
		t.Fatalf("%s %s: dropped (%v)", name, typ, err)
	}
	m := unpack(t, resp)
	if m.Header.ID != id || !m.Header.Response {
		t.Fatalf("%s %s: response header %+v, want ID %d and QR", name, typ, m.Header, id)
	}
	return m
}

// assertNoLeak fails when Direct saw any name that is not DIRECT or filtered.
func (e *env) assertNoLeak(t *testing.T) {
	t.Helper()
	for _, s := range e.direct.calls() {
		if !strings.HasSuffix(s.name, ".direct.test.") && !strings.HasSuffix(s.name, ".lan.") && s.name != "lan." {
			t.Errorf("proxied name %s %s reached the Direct resolver", s.name, s.typ)
		}
	}
}

func TestServerFakeA(t *testing.T) {
	e := newEnv(t, false, nil)
	m := e.ask(t, 0x1234, "WwW.Example.COM.", dnsmessage.TypeA)
	if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("response %+v", m)
	}
	rr := m.Answers[0]
	a, ok := rr.Body.(*dnsmessage.AResource)
	if !ok {
		t.Fatalf("answer %T", rr.Body)
	}
	addr := netip.AddrFrom4(a.A)
	if !e.pool.Contains(addr) {
		t.Fatalf("answer %s not from the pool", addr)
	}
	if h, _ := e.pool.Reverse(addr); h != "www.example.com" {
		t.Fatalf("pool maps %s to %q", addr, h)
	}
	if rr.Header.TTL != 3 {
		t.Fatalf("TTL %d, want the pool's 3", rr.Header.TTL)
	}
	if rr.Header.Name.String() != "WwW.Example.COM." || m.Questions[0].Name.String() != "WwW.Example.COM." {
		t.Fatalf("name case not preserved: %s / %s", rr.Header.Name, m.Questions[0].Name)
	}
	if !m.Header.RecursionDesired || !m.Header.RecursionAvailable {
		t.Fatalf("RD/RA: %+v", m.Header)
	}
	// The same name gets the same address.
	m2 := e.ask(t, 7, "www.example.com.", dnsmessage.TypeA)
	if got := netip.AddrFrom4(m2.Answers[0].Body.(*dnsmessage.AResource).A); got != addr {
		t.Fatalf("second answer %s, want %s", got, addr)
	}
	if len(e.direct.calls())+len(e.proxy.calls()) != 0 {
		t.Fatal("a fake-IP answer was forwarded")
	}
}

func TestServerFakeAAAA(t *testing.T) {
	e := newEnv(t, false, nil)
	m := e.ask(t, 1, "v6.example.", dnsmessage.TypeAAAA)
	aaaa, ok := m.Answers[0].Body.(*dnsmessage.AAAAResource)
	if !ok {
		t.Fatalf("answer %T", m.Answers[0].Body)
	}
	if a := netip.AddrFrom16(aaaa.AAAA); !a.Is6() || !e.pool.Contains(a) {
		t.Fatalf("AAAA %s not from the v6 pool", a)
	}

	e = newEnv(t, true, nil)
	m = e.ask(t, 2, "v6.example.", dnsmessage.TypeAAAA)
	if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Fatalf("v6 disabled: want empty NOERROR, got %v with %d answers", m.Header.RCode, len(m.Answers))
	}
	if len(e.direct.calls())+len(e.proxy.calls()) != 0 {
		t.Fatal("AAAA with v6 disabled was forwarded")
	}
}

func TestServerEDNSEcho(t *testing.T) {
	e := newEnv(t, false, nil)
	resp, _ := e.srv.Handle(context.Background(), query(t, 3, "edns.example.", dnsmessage.TypeA, 4096))
	m := unpack(t, resp)
	if len(m.Additionals) != 1 || m.Additionals[0].Header.Type != dnsmessage.TypeOPT {
		t.Fatalf("no OPT in the answer to an EDNS query: %+v", m.Additionals)
	}
	resp, _ = e.srv.Handle(context.Background(), query(t, 3, "edns.example.", dnsmessage.TypeA, 0))
	if m := unpack(t, resp); len(m.Additionals) != 0 {
		t.Fatal("OPT in the answer to a query without EDNS")
	}
}

func TestServerRouting(t *testing.T) {
	e := newEnv(t, false, nil)
	type tc struct {
		name  string
		typ   dnsmessage.Type
		where string // "direct", "proxy", "fake"
	}
	for _, c := range []tc{
		{"router.lan.", dnsmessage.TypeA, "direct"}, // filtered
		{"lan.", dnsmessage.TypeAAAA, "direct"},     // filtered
		{"nas.lan.", dnsmessage.TypeMX, "direct"},   // filtered, other type
		{"www.direct.test.", dnsmessage.TypeA, "direct"},
		{"www.direct.test.", dnsmessage.TypeTXT, "direct"},
		{"www.proxy.test.", dnsmessage.TypeA, "proxy"}, // real answer through the proxy
		{"www.proxy.test.", dnsmessage.TypeAAAA, "proxy"},
		{"mail.example.", dnsmessage.TypeMX, "proxy"}, // fake-IP name, other type
		{"example.", dnsmessage.TypeTXT, "proxy"},
		{"_sip._tcp.example.", dnsmessage.TypeSRV, "proxy"},
		{"example.", dnsmessage.Type(65), "proxy"}, // HTTPS
		{"fake.example.", dnsmessage.TypeA, "fake"},
	} {
		before := [2]int{len(e.direct.calls()), len(e.proxy.calls())}
		m := e.ask(t, 9, c.name, c.typ)
		after := [2]int{len(e.direct.calls()), len(e.proxy.calls())}
		got := "fake"
		switch {
		case after[0] > before[0]:
			got = "direct"
		case after[1] > before[1]:
			got = "proxy"
		}
		if got != c.where {
			t.Errorf("%s %s went to %s, want %s", c.name, c.typ, got, c.where)
		}
		if m.Header.RCode != dnsmessage.RCodeSuccess {
			t.Errorf("%s %s: rcode %v", c.name, c.typ, m.Header.RCode)
		}
		if c.where == "direct" && c.typ == dnsmessage.TypeA {
			if a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A); a != netip.MustParseAddr("192.0.2.10") {
				t.Errorf("%s: direct answer %s", c.name, a)
			}
		}
		if c.where == "proxy" && c.typ == dnsmessage.TypeA {
			if a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A); a != netip.MustParseAddr("203.0.113.7") {
				t.Errorf("%s: proxy answer %s", c.name, a)
			}
		}
	}
	e.assertNoLeak(t)
}

func TestServerNoProxyResolverNeverLeaks(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.Proxy = nil })
	for _, c := range []struct {
		name string
		typ  dnsmessage.Type
	}{{"mail.example.", dnsmessage.TypeMX}, {"www.proxy.test.", dnsmessage.TypeA}} {
		resp, err := e.srv.Handle(context.Background(), query(t, 5, c.name, c.typ, 0))
		if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeServerFailure {
			t.Fatalf("%s %s without a proxy resolver: %v, want SERVFAIL", c.name, c.typ, m.Header.RCode)
		}
		if err == nil || !strings.Contains(err.Error(), "no proxy resolver") {
			t.Fatalf("err = %v", err)
		}
	}
	if n := len(e.direct.calls()); n != 0 {
		t.Fatalf("%d proxied queries fell back to Direct", n)
	}
}

func TestServerUnknownRouteIsProxy(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.Decide = func(string) Route { return Route(42) } })
	e.ask(t, 1, "x.example.", dnsmessage.TypeA)
	if len(e.direct.calls()) != 0 || len(e.proxy.calls()) != 1 {
		t.Fatalf("unknown route: direct %v proxy %v", e.direct.calls(), e.proxy.calls())
	}
	if Route(42).String() != "Route(42)" || RouteFakeIP.String() != "fake-ip" {
		t.Fatal("Route.String")
	}
}

func TestServerNoPool(t *testing.T) {
	// No pool and no decider: a plain forwarder to Direct.
	e := newEnv(t, false, func(c *Config) { c.Pool = nil; c.Decide = nil })
	m := e.ask(t, 1, "www.example.", dnsmessage.TypeA)
	if a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A); a != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("answer %s", a)
	}
	// No pool with a decider: fake-IP names get real answers via the proxy.
	e = newEnv(t, false, func(c *Config) { c.Pool = nil })
	m = e.ask(t, 1, "www.example.", dnsmessage.TypeA)
	if a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A); a != netip.MustParseAddr("203.0.113.7") {
		t.Fatalf("answer %s", a)
	}
	e.assertNoLeak(t)
	// PTR for a would-be fake address is not answered locally without a pool.
	e.ask(t, 1, "5.0.18.198.in-addr.arpa.", dnsmessage.TypePTR)
	if len(e.proxy.calls()) != 2 {
		t.Fatalf("proxy calls %v", e.proxy.calls())
	}
}

func TestServerNoDeciderUsesFakeIP(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.Decide = nil })
	m := e.ask(t, 1, "www.direct.test.", dnsmessage.TypeA)
	if a := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A); !e.pool.Contains(a) {
		t.Fatalf("answer %s, want a fake address", a)
	}
}

func TestServerPTR(t *testing.T) {
	e := newEnv(t, false, nil)
	a4 := netip.AddrFrom4(e.ask(t, 1, "ptr4.example.", dnsmessage.TypeA).Answers[0].Body.(*dnsmessage.AResource).A)
	a6 := netip.AddrFrom16(e.ask(t, 1, "ptr6.example.", dnsmessage.TypeAAAA).Answers[0].Body.(*dnsmessage.AAAAResource).AAAA)
	for _, c := range []struct {
		a    netip.Addr
		want string
	}{{a4, "ptr4.example."}, {a6, "ptr6.example."}} {
		name := reverseName(c.a)
		m := e.ask(t, 2, name, dnsmessage.TypePTR)
		if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
			t.Fatalf("PTR %s: %v, %d answers", name, m.Header.RCode, len(m.Answers))
		}
		ptr := m.Answers[0].Body.(*dnsmessage.PTRResource)
		if ptr.PTR.String() != c.want || m.Answers[0].Header.TTL != 3 {
			t.Fatalf("PTR %s = %s ttl %d, want %s", name, ptr.PTR, m.Answers[0].Header.TTL, c.want)
		}
	}
	// An unmapped address in the fake range: NXDOMAIN, locally.
	for _, a := range []string{"198.19.200.1", "198.18.0.1", "fc00::9999"} {
		m := e.ask(t, 3, reverseName(netip.MustParseAddr(a)), dnsmessage.TypePTR)
		if m.Header.RCode != dnsmessage.RCodeNameError {
			t.Fatalf("PTR for unmapped %s: %v", a, m.Header.RCode)
		}
	}
	if len(e.direct.calls())+len(e.proxy.calls()) != 0 {
		t.Fatal("a PTR for the fake range was forwarded")
	}
	// Outside the fake range: routed like any name (here fake-IP -> proxy).
	e.ask(t, 4, "1.2.0.192.in-addr.arpa.", dnsmessage.TypePTR)
	if len(e.proxy.calls()) != 1 {
		t.Fatal("PTR outside the fake range was not forwarded")
	}
}

func reverseName(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]}).String() + ".in-addr.arpa."
	}
	const hex = "0123456789abcdef"
	b := a.As16()
	var sb strings.Builder
	for i := 15; i >= 0; i-- {
		sb.WriteByte(hex[b[i]&0xf])
		sb.WriteByte('.')
		sb.WriteByte(hex[b[i]>>4])
		sb.WriteByte('.')
	}
	return sb.String() + "ip6.arpa."
}

func TestParseReverse(t *testing.T) {
	for _, a := range []string{"198.18.0.5", "0.0.0.0", "255.255.255.255", "fc00::1:2", "2001:db8::abcd:ef01"} {
		addr := netip.MustParseAddr(a)
		name := strings.TrimSuffix(reverseName(addr), ".")
		if got, ok := parseReverse(name); !ok || got != addr {
			t.Errorf("parseReverse(%s) = %s %v, want %s", name, got, ok, a)
		}
	}
	for _, bad := range []string{
		"in-addr.arpa", "1.2.3.in-addr.arpa", "1.2.3.4.5.in-addr.arpa", "256.1.1.1.in-addr.arpa",
		"01.1.1.1.in-addr.arpa", "a.1.1.1.in-addr.arpa", "1..1.1.in-addr.arpa",
		strings.Repeat("0.", 31) + "ip6.arpa", strings.Repeat("g.", 32) + "ip6.arpa", strings.Repeat("00", 32) + "ip6.arpa",
		"example.com",
	} {
		if a, ok := parseReverse(bad); ok {
			t.Errorf("parseReverse(%q) = %s", bad, a)
		}
	}
}

func TestServerCacheAndTTL(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.MaxTTL = 120 * time.Second })
	ask := func(id uint16) *dnsmessage.Message { return e.ask(t, id, "Cached.Proxy.Test.", dnsmessage.TypeA) }
	m := ask(100)
	if m.Answers[0].Header.TTL != 60 {
		t.Fatalf("first TTL %d, want 60", m.Answers[0].Header.TTL)
	}
	e.clk.Add(10 * time.Second)
	m = ask(200)
	if n := len(e.proxy.calls()); n != 1 {
		t.Fatalf("cache miss: proxy called %d times", n)
	}
	if m.Header.ID != 200 {
		t.Fatalf("cached answer ID %d, want 200", m.Header.ID)
	}
	if m.Answers[0].Header.TTL != 50 {
		t.Fatalf("cached TTL %d, want 60-10", m.Answers[0].Header.TTL)
	}
	// A different case of the same name hits the cache, and the question
	// echoes the asker's case.
	m = e.ask(t, 300, "cached.proxy.test.", dnsmessage.TypeA)
	if len(e.proxy.calls()) != 1 || m.Questions[0].Name.String() != "cached.proxy.test." {
		t.Fatalf("case variant: calls %d question %s", len(e.proxy.calls()), m.Questions[0].Name)
	}
	// Another type is another entry.
	e.ask(t, 301, "cached.proxy.test.", dnsmessage.TypeAAAA)
	if len(e.proxy.calls()) != 2 {
		t.Fatal("AAAA answered from the A entry")
	}
	e.clk.Add(50 * time.Second) // 60s after the first answer: expired
	m = ask(400)
	if n := len(e.proxy.calls()); n != 3 {
		t.Fatalf("expired entry served: proxy called %d times", n)
	}
	if m.Answers[0].Header.TTL != 60 {
		t.Fatalf("refreshed TTL %d", m.Answers[0].Header.TTL)
	}

	// MaxTTL caps a long TTL both in the cache and towards the client.
	m = e.ask(t, 1, "long.direct.test.", dnsmessage.TypeA) // Direct answers with TTL 300
	if m.Answers[0].Header.TTL != 120 {
		t.Fatalf("TTL %d, want capped at MaxTTL 120", m.Answers[0].Header.TTL)
	}
	e.clk.Add(119 * time.Second)
	if m = e.ask(t, 1, "long.direct.test.", dnsmessage.TypeA); m.Answers[0].Header.TTL != 1 || len(e.direct.calls()) != 1 {
		t.Fatalf("TTL %d calls %d", m.Answers[0].Header.TTL, len(e.direct.calls()))
	}
	e.clk.Add(time.Second)
	e.ask(t, 1, "long.direct.test.", dnsmessage.TypeA)
	if len(e.direct.calls()) != 2 {
		t.Fatal("entry outlived MaxTTL")
	}
}

func TestServerCacheMinTTLAndNegative(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.MinTTL = 30 * time.Second })
	e.proxy.answer = answerWith(0, "203.0.113.7") // TTL 0 upstream
	e.ask(t, 1, "zero.proxy.test.", dnsmessage.TypeA)
	e.clk.Add(20 * time.Second)
	m := e.ask(t, 2, "zero.proxy.test.", dnsmessage.TypeA)
	if len(e.proxy.calls()) != 1 {
		t.Fatal("MinTTL did not keep a TTL-0 answer")
	}
	if m.Answers[0].Header.TTL != 0 {
		t.Fatalf("client TTL %d, want the record's own 0", m.Answers[0].Header.TTL)
	}

	// NXDOMAIN with an SOA is cached for min(SOA TTL, SOA minimum).
	e = newEnv(t, false, nil)
	e.proxy.answer = func(q []byte) ([]byte, error) {
		var m dnsmessage.Message
		m.Unpack(q)
		m.Header.Response = true
		m.Header.RCode = dnsmessage.RCodeNameError
		m.Additionals = nil
		m.Authorities = []dnsmessage.Resource{{
			Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("test."), Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: 900},
			Body:   &dnsmessage.SOAResource{NS: dnsmessage.MustNewName("ns.test."), MBox: dnsmessage.MustNewName("h.test."), MinTTL: 20},
		}}
		return m.Pack()
	}
	m = e.ask(t, 1, "nx.proxy.test.", dnsmessage.TypeA)
	if m.Header.RCode != dnsmessage.RCodeNameError {
		t.Fatalf("rcode %v", m.Header.RCode)
	}
	e.clk.Add(19 * time.Second)
	e.ask(t, 2, "nx.proxy.test.", dnsmessage.TypeA)
	if len(e.proxy.calls()) != 1 {
		t.Fatal("negative answer not cached")
	}
	e.clk.Add(time.Second)
	e.ask(t, 3, "nx.proxy.test.", dnsmessage.TypeA)
	if len(e.proxy.calls()) != 2 {
		t.Fatal("negative answer cached longer than the SOA minimum")
	}

	// SERVFAIL from upstream is passed on and never cached.
	e.proxy.answer = func(q []byte) ([]byte, error) {
		var m dnsmessage.Message
		m.Unpack(q)
		m.Header.Response = true
		m.Header.RCode = dnsmessage.RCodeServerFailure
		return m.Pack()
	}
	for i := range 2 {
		if m := e.ask(t, uint16(i), "sf.proxy.test.", dnsmessage.TypeA); m.Header.RCode != dnsmessage.RCodeServerFailure {
			t.Fatalf("rcode %v", m.Header.RCode)
		}
	}
	if len(e.proxy.calls()) != 4 {
		t.Fatalf("SERVFAIL cached: %d calls", len(e.proxy.calls()))
	}
}

func TestServerCacheDisabledAndBounded(t *testing.T) {
	e := newEnv(t, false, func(c *Config) { c.CacheSize = -1 })
	e.ask(t, 1, "a.proxy.test.", dnsmessage.TypeA)
	e.ask(t, 1, "a.proxy.test.", dnsmessage.TypeA)
	if len(e.proxy.calls()) != 2 || e.srv.cache != nil {
		t.Fatal("cache disabled but used")
	}
	e = newEnv(t, false, func(c *Config) { c.CacheSize = 2 })
	for _, n := range []string{"a", "b", "c"} {
		e.ask(t, 1, n+".proxy.test.", dnsmessage.TypeA)
	}
	if n := e.srv.cache.Len(); n != 2 {
		t.Fatalf("cache holds %d entries, bound is 2", n)
	}
	e.ask(t, 1, "c.proxy.test.", dnsmessage.TypeA) // hit
	e.ask(t, 1, "a.proxy.test.", dnsmessage.TypeA) // evicted: miss
	if len(e.proxy.calls()) != 4 {
		t.Fatalf("calls %d, want 4", len(e.proxy.calls()))
	}
}

func TestServerForwardFailures(t *testing.T) {
	e := newEnv(t, false, nil)
	boom := errors.New("upstream down")
	e.proxy.answer = func([]byte) ([]byte, error) { return nil, boom }
	resp, err := e.srv.Handle(context.Background(), query(t, 77, "x.proxy.test.", dnsmessage.TypeA, 0))
	if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeServerFailure || m.Header.ID != 77 {
		t.Fatalf("resolver error: %+v", m.Header)
	}
	if !errors.Is(err, boom) {
		t.Fatalf("err %v does not wrap the cause", err)
	}
	for name, bad := range map[string]func(q []byte) ([]byte, error){
		"garbage":        func([]byte) ([]byte, error) { return []byte{1, 2, 3}, nil },
		"not a response": func(q []byte) ([]byte, error) { return q, nil },
		"other question": func([]byte) ([]byte, error) {
			return answerWith(60, "1.1.1.1")(query(t, 1, "evil.example.", dnsmessage.TypeA, 0))
		},
	} {
		e.proxy.answer = bad
		resp, err := e.srv.Handle(context.Background(), query(t, 78, "y.proxy.test.", dnsmessage.TypeA, 0))
		if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeServerFailure {
			t.Errorf("%s: rcode %v", name, m.Header.RCode)
		}
		if err == nil {
			t.Errorf("%s: no error reported", name)
		}
	}
	if e.srv.cache.Len() != 0 {
		t.Fatal("a bad answer was cached")
	}
}

func TestServerMalformed(t *testing.T) {
	e := newEnv(t, false, nil)
	good := query(t, 0xabcd, "example.com.", dnsmessage.TypeA, 0)
	for _, c := range []struct {
		name  string
		msg   []byte
		rcode dnsmessage.RCode // 0xffff: dropped
	}{
		{"empty", nil, 0xffff},
		{"short header", good[:11], 0xffff},
		{"response", func() []byte { b := clone(good); b[2] |= 0x80; return b }(), 0xffff},
		{"header only", good[:12], dnsmessage.RCodeFormatError},
		{"qdcount 0", func() []byte { b := clone(good[:12]); b[5] = 0; return b }(), dnsmessage.RCodeFormatError},
		{"qdcount 2", func() []byte { b := clone(good); b[5] = 2; return b }(), dnsmessage.RCodeFormatError},
		{"truncated question", good[:len(good)-3], dnsmessage.RCodeFormatError},
		{"answer count lies", func() []byte { b := clone(good); b[7] = 1; return b }(), dnsmessage.RCodeFormatError},
		{"opcode status", func() []byte { b := clone(good); b[2] |= 2 << 3; return b }(), dnsmessage.RCodeNotImplemented},
		{"opcode update", func() []byte { b := clone(good); b[2] |= 5 << 3; b[5] = 0; return b }(), dnsmessage.RCodeNotImplemented},
		{"pointer loop", append(clone(good[:12]), 0xc0, 12, 0, 1, 0, 1), dnsmessage.RCodeFormatError},
		{"class CHAOS", func() []byte { b := clone(good); b[len(b)-1] = 3; return b }(), dnsmessage.RCodeRefused},
		{"two OPT", twoOPT(t), dnsmessage.RCodeFormatError},
	} {
		resp, err := e.srv.Handle(context.Background(), c.msg)
		if c.rcode == 0xffff {
			if resp != nil || err == nil {
				t.Errorf("%s: want drop with a reason, got %x %v", c.name, resp, err)
			}
			continue
		}
		if resp == nil {
			t.Errorf("%s: dropped (%v), want %v", c.name, err, c.rcode)
			continue
		}
		m := unpack(t, resp)
		if m.Header.RCode != c.rcode || m.Header.ID != 0xabcd || !m.Header.Response {
			t.Errorf("%s: header %+v, want rcode %v", c.name, m.Header, c.rcode)
		}
	}
	if len(e.direct.calls())+len(e.proxy.calls()) != 0 {
		t.Fatal("a malformed query was forwarded")
	}
}

func twoOPT(t *testing.T) []byte {
	q := query(t, 0xabcd, "example.com.", dnsmessage.TypeA, 1232)
	opt := q[len(q)-11:]
	q = append(clone(q), opt...)
	q[11] = 2
	return q
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func TestServerTruncatesForUDP(t *testing.T) {
	e := newEnv(t, false, nil)
	e.proxy.answer = func(q []byte) ([]byte, error) {
		var m dnsmessage.Message
		m.Unpack(q)
		m.Header.Response = true
		m.Additionals = nil
		for i := range 40 {
			m.Answers = append(m.Answers, dnsmessage.Resource{
				Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassINET, TTL: 60},
				Body:   &dnsmessage.TXTResource{TXT: []string{strings.Repeat(string(rune('a'+i%26)), 40)}},
			})
		}
		return m.Pack()
	}
	m := e.ask(t, 5, "big.proxy.test.", dnsmessage.TypeTXT)
	if !m.Header.Truncated || len(m.Answers) != 0 || len(m.Questions) != 1 {
		t.Fatalf("512-byte client: TC %v answers %d", m.Header.Truncated, len(m.Answers))
	}
	resp, _ := e.srv.Handle(context.Background(), query(t, 6, "big.proxy.test.", dnsmessage.TypeTXT, 4096))
	if m := unpack(t, resp); m.Header.Truncated || len(m.Answers) != 40 {
		t.Fatalf("EDNS 4096 client: TC %v answers %d", m.Header.Truncated, len(m.Answers))
	}
	// Over a stream there is no truncation.
	resp, _ = e.srv.handle(context.Background(), query(t, 7, "big.proxy.test.", dnsmessage.TypeTXT, 0), false)
	if m := unpack(t, resp); m.Header.Truncated || len(m.Answers) != 40 {
		t.Fatalf("stream: TC %v answers %d", m.Header.Truncated, len(m.Answers))
	}
	if len(e.proxy.calls()) != 1 {
		t.Fatalf("the big answer was not cached: %d calls", len(e.proxy.calls()))
	}
}

func TestServerPoolExhausted(t *testing.T) {
	e := newEnv(t, false, nil)
	small := mustPool(t, "10.0.0.0/29", "", PoolOptions{Now: e.clk.Now, Size: 1})
	srv, err := NewServer(Config{Pool: small, Direct: e.direct, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := srv.Handle(context.Background(), query(t, 1, "one.example.", dnsmessage.TypeA, 0))
	if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeSuccess {
		t.Fatal(m.Header.RCode)
	}
	// The one mapping is free: a new name reuses it rather than fail.
	resp, _ = srv.Handle(context.Background(), query(t, 2, "two.example.", dnsmessage.TypeA, 0))
	if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeSuccess {
		t.Fatalf("full pool with a free mapping: %v", m.Header.RCode)
	}
	// Held by a flow, it is not reused: the pool is exhausted.
	if _, ok := small.Acquire(small.Lookup("two.example", false)); !ok {
		t.Fatal("Acquire failed")
	}
	resp, err = srv.Handle(context.Background(), query(t, 3, "three.example.", dnsmessage.TypeA, 0))
	if m := unpack(t, resp); m.Header.RCode != dnsmessage.RCodeServerFailure || !errors.Is(err, errPoolExhausted) {
		t.Fatalf("exhausted pool: %v %v", m.Header.RCode, err)
	}
}

func TestServerNameFloodWithinTTL(t *testing.T) {
	// 65,600 names within one TTL fill the default pool (65,535); a
	// legitimate name asked next still gets an address, not SERVFAIL.
	e := newEnv(t, false, nil)
	for i := range 65_600 {
		if a := e.pool.Lookup(fmt.Sprintf("flood%d.example", i), false); !a.IsValid() {
			t.Fatalf("flood name %d got no address", i)
		}
	}
	resp, err := e.srv.Handle(context.Background(), query(t, 1, "legit.example.", dnsmessage.TypeA, 0))
	m := unpack(t, resp)
	if err != nil || m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("after a flood: %v, %d answers, %v", m.Header.RCode, len(m.Answers), err)
	}
}

func TestNewServerErrors(t *testing.T) {
	d := &fakeResolver{}
	for _, c := range []Config{
		{},
		{Direct: d, MinTTL: -1},
		{Direct: d, MaxTTL: -1},
		{Direct: d, MinTTL: 2 * time.Hour},
	} {
		if _, err := NewServer(c); err == nil {
			t.Errorf("NewServer(%+v) accepted it", c)
		}
	}
}

func TestServerConcurrent(t *testing.T) {
	e := newEnv(t, false, nil)
	var wg sync.WaitGroup
	names := []string{"a.example.", "b.proxy.test.", "c.direct.test.", "d.lan.", "e.example."}
	types := []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA, dnsmessage.TypeMX}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				q := query(t, uint16(g*1000+i), names[(g+i)%len(names)], types[i%len(types)], 0)
				resp, _ := e.srv.Handle(context.Background(), q)
				var p dnsmessage.Parser
				h, err := p.Start(resp)
				if err != nil || h.ID != uint16(g*1000+i) {
					t.Errorf("bad response %v %+v", err, h)
					return
				}
				if i%50 == 0 {
					e.clk.Add(time.Second)
				}
			}
		}()
	}
	wg.Wait()
	e.assertNoLeak(t)
}

func TestServerCachedAnswerDropsEDNSOptions(t *testing.T) {
	e := newEnv(t, false, nil)
	cookie := dnsmessage.Option{Code: 10, Data: []byte("client01server0123456789")}
	e.proxy.answer = func(q []byte) ([]byte, error) {
		resp, err := answerWith(60, "203.0.113.7")(q)
		if err != nil {
			return nil, err
		}
		var m dnsmessage.Message
		m.Unpack(resp)
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(1232, 0, false)
		m.Additionals = []dnsmessage.Resource{{Header: rh, Body: &dnsmessage.OPTResource{Options: []dnsmessage.Option{cookie}}}}
		return m.Pack()
	}
	opts := func(resp []byte) int {
		m := unpack(t, resp)
		for _, rr := range m.Additionals {
			if o, ok := rr.Body.(*dnsmessage.OPTResource); ok {
				return len(o.Options)
			}
		}
		t.Fatal("no OPT in the answer")
		return 0
	}
	first, _ := e.srv.Handle(context.Background(), query(t, 1, "c.proxy.test.", dnsmessage.TypeA, 1232))
	if opts(first) != 1 {
		t.Fatal("the asker's own exchange lost its cookie")
	}
	second, _ := e.srv.Handle(context.Background(), query(t, 2, "c.proxy.test.", dnsmessage.TypeA, 1232))
	if len(e.proxy.calls()) != 1 {
		t.Fatal("not served from the cache")
	}
	if opts(second) != 0 {
		t.Fatal("a cached answer carried another exchange's cookie")
	}
}
