package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/outbound"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeOut is an outbound that records what it is asked to dial.
type fakeOut struct {
	name   string
	mu     sync.Mutex
	dialed []string
}

func (o *fakeOut) Name() string { return o.name }
func (o *fakeOut) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	o.mu.Lock()
	o.dialed = append(o.dialed, network+" "+address)
	o.mu.Unlock()
	return nil, errors.New("fakeOut does not connect")
}
func (o *fakeOut) ListenPacket(context.Context) (router.PacketConn, error) {
	return nil, router.ErrUDPUnsupported
}

func (o *fakeOut) calls() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.dialed...)
}

const ruleText = `
DOMAIN-SUFFIX,blocked.test,REJECT
DOMAIN-SUFFIX,silent.test,REJECT-DROP
DOMAIN-SUFFIX,direct.test,DIRECT
DOMAIN-SUFFIX,corp.test,corp
DOMAIN-SUFFIX,chained.test,both
IP-CIDR,10.0.0.0/8,corp
PROCESS-NAME,curl,corp
IN-USER,pixel,both
MATCH,DIRECT
`

type env struct {
	p              *Policy
	direct, corp   *fakeOut
	both           router.Outbound
	pool           *dns.Pool
	names          *dns.RealNames
	processLookups int
}

func newEnv(t *testing.T, text string, mod func(*Config)) *env {
	t.Helper()
	rs, err := rules.Parse(strings.NewReader(text), "rules.txt", rules.ParseOptions{TargetNames: []string{"corp", "both"}})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := dns.NewPool(netip.Prefix{}, netip.Prefix{}, dns.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{direct: &fakeOut{name: "DIRECT"}, corp: &fakeOut{name: "corp"}, pool: pool, names: dns.NewRealNames(0, pool)}
	u1, _ := url.Parse("socks5://hop1.invalid:1080")
	u2, _ := url.Parse("http://hop2.invalid:3128")
	if e.both, err = outbound.Chain("both", &direct.Dialer{}, u1, u2); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Rules:     rs,
		Outbounds: map[string]router.Outbound{"corp": e.corp, "both": e.both},
		Direct:    e.direct,
		Pool:      pool,
		RealNames: e.names,
		Process: func(network string, src, dst netip.AddrPort) (procinfo.Owner, error) {
			e.processLookups++
			if src.Port() == 4242 {
				return procinfo.Owner{Path: "/usr/bin/curl", UID: 1000, PID: 4711}, nil
			}
			return procinfo.Owner{PID: -1, UID: -1}, errors.New("no such socket")
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	if e.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	return e
}

func meta(network, src, dst, host string) *rules.Metadata {
	m := &rules.Metadata{Network: network, Host: host, UID: -1}
	if src != "" {
		m.Src = netip.MustParseAddrPort(src)
	}
	if dst != "" {
		m.Dst = netip.MustParseAddrPort(dst)
	}
	return m
}

// TestDecide: every kind of decision, as the router gets it.
func TestDecide(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	for _, tc := range []struct {
		name   string
		m      *rules.Metadata
		action router.Action
		out    router.Outbound
		rule   string
	}{
		{"direct by rule", meta("tcp", "", "", "www.direct.test"), router.Proxy, e.direct, `DIRECT by rule #3 "DOMAIN-SUFFIX,direct.test,DIRECT" (rules.txt:4)`},
		{"direct by default", meta("tcp", "", "192.0.2.1:80", ""), router.Proxy, e.direct, `DIRECT by rule #9 "MATCH,DIRECT" (rules.txt:10)`},
		{"reject", meta("tcp", "", "", "ads.blocked.test"), router.Reject, nil, `REJECT by rule #1 "DOMAIN-SUFFIX,blocked.test,REJECT" (rules.txt:2)`},
		{"reject-drop", meta("udp", "", "", "x.silent.test"), router.RejectDrop, nil, `REJECT-DROP by rule #2`},
		{"proxy by name", meta("tcp", "", "", "git.corp.test"), router.Proxy, e.corp, `corp by rule #4`},
		{"proxy by address", meta("udp", "", "10.1.2.3:53", ""), router.Proxy, e.corp, `corp by rule #6`},
		{"chain", meta("tcp", "", "", "a.chained.test"), router.Proxy, e.both, `both by rule #5`},
		{"chain by inbound user", &rules.Metadata{Network: "tcp", InType: "wireguard", InName: "wg", InUser: "pixel", UID: -1}, router.Proxy, e.both, `both by rule #8 "IN-USER,pixel,both"`},
		{"process", meta("tcp", "198.18.0.1:4242", "192.0.2.1:80", ""), router.Proxy, e.corp, `corp by rule #7 "PROCESS-NAME,curl,corp"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, mt := e.p.Match(tc.m)
			if d.Action != tc.action || d.Outbound != tc.out || !strings.HasPrefix(d.Rule, tc.rule) || d.Rule != mt.String() {
				t.Errorf("decision %+v (match %v), want action %v outbound %v rule %q", d, mt, tc.action, tc.out, tc.rule)
			}
		})
	}
	// The lookup fills the metadata the flow record is made from: path,
	// uid and pid.
	m := meta("tcp", "198.18.0.1:4242", "192.0.2.1:80", "")
	e.p.Decide(m)
	if m.Process != "/usr/bin/curl" || m.UID != 1000 || m.PID != 4711 {
		t.Errorf("metadata after a process rule: process %q uid %d pid %d", m.Process, m.UID, m.PID)
	}
	// The process is looked up only when a process rule is reached and
	// there is a socket to look up.
	e.processLookups = 0
	e.p.Decide(meta("tcp", "", "", "x.corp.test"))
	e.p.Decide(meta("tcp", "", "192.0.2.1:80", ""))
	if e.processLookups != 0 {
		t.Errorf("%d process lookups for flows decided before the process rule, or without a source", e.processLookups)
	}
}

// TestNoRules: without rules every flow takes the default outbound.
func TestNoRules(t *testing.T) {
	def := &fakeOut{name: "socks5://proxy:1080"}
	p, err := New(Config{Direct: &fakeOut{name: "DIRECT"}, Default: def})
	if err != nil {
		t.Fatal(err)
	}
	d, mt := p.Match(meta("tcp", "", "", "anything.test"))
	if d.Action != router.Proxy || d.Outbound != def || d.Rule != "default (no rules)" || mt.Matched() || p.HasRules() {
		t.Errorf("decision %+v, match %+v", d, mt)
	}
	if p.Summary() != "socks5://proxy:1080" {
		t.Errorf("summary %q", p.Summary())
	}
	if _, err := New(Config{Direct: def}); err == nil {
		t.Error("a policy with neither rules nor a default was built")
	}
	if _, err := New(Config{Default: def}); err == nil {
		t.Error("a policy without DIRECT was built")
	}
}

// TestReverseAndRealHost: a fake IP names its name; a real address names
// the name DNS last answered it for; anything else names nothing.
func TestReverseAndRealHost(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	fake := e.pool.Lookup("git.corp.test", false)
	if host, ok := e.p.ReverseHost(fake); !ok || host != "git.corp.test" {
		t.Errorf("ReverseHost(%s) = %q, %v", fake, host, ok)
	}
	if _, ok := e.p.ReverseHost(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("a real address reversed to a name")
	}
	if _, ok := e.p.RealHost(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("an address nobody answered for has a real name")
	}
	// Teach the table through a DNS server, as in a run.
	srv, err := dns.NewServer(dns.Config{Pool: e.pool, Names: e.names, Decide: e.p.DNSRoute, Direct: answerA("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Handle(context.Background(), query(t, "www.direct.test.", 1)); err != nil {
		t.Fatal(err)
	}
	if host, ok := e.p.RealHost(netip.MustParseAddr("192.0.2.1")); !ok || host != "www.direct.test" {
		t.Errorf("RealHost = %q, %v", host, ok)
	}
	noDNS := newEnv(t, ruleText, func(c *Config) { c.Pool, c.RealNames = nil, nil })
	if _, ok := noDNS.p.ReverseHost(fake); ok {
		t.Error("a policy without a pool reversed a fake IP")
	}
	if _, ok := noDNS.p.RealHost(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("a policy without a table named a real address")
	}
}

// TestAcquireHostHoldsThePoolMapping: a fake IP a flow holds keeps its
// name through a flood of new names (the pool of 65,535 turns over twice);
// released, it is reused like any other once its grace period is over.
func TestAcquireHostHoldsThePoolMapping(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	fake := e.pool.Lookup("held.corp.test", false)
	if host, ok := e.p.AcquireHost(fake); !ok || host != "held.corp.test" {
		t.Fatalf("AcquireHost(%s) = %q, %v", fake, host, ok)
	}
	for i := range 2 * dns.MaxPoolSize {
		if a := e.pool.Lookup(fmt.Sprintf("n%d.example", i), false); a == fake {
			t.Fatalf("name %d took the held address", i)
		}
	}
	if host, _ := e.p.ReverseHost(fake); host != "held.corp.test" {
		t.Fatalf("the held address names %q", host)
	}
	e.p.ReleaseHost(fake)
	if _, ok := e.p.AcquireHost(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("a real address was held")
	}
	noDNS := newEnv(t, ruleText, func(c *Config) { c.Pool, c.RealNames = nil, nil })
	if _, ok := noDNS.p.AcquireHost(fake); ok {
		t.Error("a policy without a pool held a fake IP")
	}
	noDNS.p.ReleaseHost(fake)
}

// TestDNSRouteAndResolver: a DIRECT name is resolved for real; others get
// fake IPs, and their non-address queries go through the proxy their rule
// picks (rejected names: none).
func TestDNSRouteAndResolver(t *testing.T) {
	ns := []dns.Nameserver{{Network: "udp", Addr: netip.MustParseAddrPort("192.0.2.53:53")}}
	e := newEnv(t, ruleText, func(c *Config) { c.Nameservers = ns })
	for host, want := range map[string]dns.Route{
		"www.direct.test": dns.RouteDirect, "elsewhere.test": dns.RouteDirect,
		"git.corp.test": dns.RouteFakeIP, "ads.blocked.test": dns.RouteFakeIP, "a.chained.test": dns.RouteFakeIP,
	} {
		if got := e.p.DNSRoute(host); got != want {
			t.Errorf("DNSRoute(%s) = %v, want %v", host, got, want)
		}
	}
	if r := e.p.DNSResolver("ads.blocked.test"); r != nil {
		t.Error("a rejected name has a resolver")
	}
	r := e.p.DNSResolver("git.corp.test")
	if r == nil {
		t.Fatal("a proxied name has no resolver")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.Exchange(ctx, query(t, "git.corp.test.", dnsTXT))
	if got := e.corp.calls(); len(got) != 1 || got[0] != "tcp 192.0.2.53:53" {
		t.Errorf("corp dialed %v, want the nameserver over TCP through its CONNECT", got)
	}
	if len(e.direct.calls()) != 0 {
		t.Error("DIRECT was dialed for a proxied name's query")
	}
	noNS := newEnv(t, ruleText, nil)
	if noNS.p.DNSResolver("git.corp.test") != nil {
		t.Error("a resolver without nameservers")
	}
}

func TestSummary(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	if got, want := e.p.Summary(), "9 rules over DIRECT, both, corp"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
}
