package api

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// fakeFlows is a FlowTable of fixed flows; closing removes them.
type fakeFlows struct {
	mu       sync.Mutex
	flows    []Flow
	up, down int64
	closed   []string
}

func newFakeFlows() *fakeFlows {
	return &fakeFlows{up: 123456, down: 7890123, flows: []Flow{
		{
			ID: "5f0c6a9e-3b1d-4c2a-9e7f-0a1b2c3d4e5f", Network: "tcp", InType: "tun", InName: "tunsocks0",
			Src: netip.MustParseAddrPort("198.18.0.1:40312"), Dst: netip.MustParseAddrPort("198.18.0.7:443"),
			Host: "example.com", FakeIP: true, Process: "/usr/bin/curl", UID: 1000,
			RuleType: "DOMAIN-SUFFIX", RulePayload: "example.com",
			RuleLine: `corp by rule #2 "DOMAIN-SUFFIX,example.com,corp" (tunsocks.yaml:14)`,
			Outbound: "corp", Target: "example.com:443", Remote: "10.0.0.1:1080", Upstream: "10.0.0.1:1080",
			Start: t0.Add(-90 * time.Second), Up: 517, Down: 48213,
		},
		{
			ID: "0b8e2d4c-6f1a-4e3b-8c5d-7e9f0a1b2c3d", Network: "udp", InType: "tun", InName: "tunsocks0",
			Src: netip.MustParseAddrPort("[fc00::1]:5353"), Dst: netip.MustParseAddrPort("[2001:db8::53]:53"),
			UID: -1, Outbound: "DIRECT", Target: "[2001:db8::53]:53", Remote: "[2001:db8::53]:53",
			RuleLine: "DIRECT (no rule matched; default)",
			Start:    t0.Add(-2 * time.Second), Up: 40, Down: 120,
		},
		{
			ID: "9d7c5b3a-1e2f-4a6b-8c0d-2e4f6a8b0c1d", Network: "tcp", InType: "socks", InName: "socks", InUser: "alice",
			Src: netip.MustParseAddrPort("127.0.0.1:50123"), Dst: netip.AddrPortFrom(netip.Addr{}, 22),
			Host: "git.example.org", UID: -1, RuleType: "AND", RulePayload: "((DST-PORT,22),(NETWORK,tcp))",
			RuleLine: `chain by rule #1 "AND,((DST-PORT,22),(NETWORK,tcp)),chain" (tunsocks.yaml:13)`,
			Outbound: "chain", Chain: []string{"corp", "far"}, Target: "git.example.org:22", Remote: "10.0.0.1:1080", Upstream: "10.0.0.1:1080",
			Start: t0.Add(-1 * time.Hour), Up: 9, Down: 10,
		},
	}}
}

func (f *fakeFlows) Flows() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Flow(nil), f.flows...)
}

func (f *fakeFlows) Totals() (int64, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up, f.down
}

func (f *fakeFlows) add(up, down int64) {
	f.mu.Lock()
	f.up += up
	f.down += down
	f.mu.Unlock()
}

func (f *fakeFlows) CloseFlow(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, fl := range f.flows {
		if fl.ID == id {
			f.flows = append(f.flows[:i], f.flows[i+1:]...)
			f.closed = append(f.closed, id)
			return true
		}
	}
	return false
}

func (f *fakeFlows) CloseAll() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.flows)
	for _, fl := range f.flows {
		f.closed = append(f.closed, fl.ID)
	}
	f.flows = nil
	return n
}

func (f *fakeFlows) closedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.closed...)
}

// fakeProxies answers delay tests from a table: a duration, an error, or
// (block) waiting for the context.
type fakeProxies struct {
	delays map[string]time.Duration
	errs   map[string]error
	block  map[string]bool
}

func newFakeProxies() *fakeProxies {
	return &fakeProxies{
		delays: map[string]time.Duration{"DIRECT": 12 * time.Millisecond, "corp": 87 * time.Millisecond},
		errs:   map[string]error{"web": errors.New("connection refused")},
		block:  map[string]bool{"chain": true},
	}
}

func (p *fakeProxies) Proxies() []Proxy {
	return []Proxy{
		{Name: "DIRECT", Type: "Direct", UDP: true, Flows: 12, Up: 1000, Down: 20000},
		{Name: "REJECT", Type: "Reject", Flows: 3},
		{Name: "corp", Type: "Socks5", UDP: true, Server: "10.0.0.1:1080", Flows: 40, Up: 5000, Down: 900000},
		{Name: "web", Type: "Http", Server: "10.0.0.2:8080"},
		{Name: "chain", Type: "Relay", Chain: []string{"corp", "far"}, Flows: 1, Up: 9, Down: 10},
	}
}

func (p *fakeProxies) Delay(ctx context.Context, name, url string) (time.Duration, error) {
	if p.block[name] {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if err, ok := p.errs[name]; ok {
		return 0, err
	}
	if d, ok := p.delays[name]; ok {
		return d, nil
	}
	return 0, fmt.Errorf("outbound %q: %w", name, ErrNotFound)
}

type fakeRules []Rule

func (r fakeRules) Rules() []Rule { return r }

var testRules = fakeRules{
	{Index: 0, Type: "AND", Payload: "((DST-PORT,22),(NETWORK,tcp))", Target: "chain",
		Line: "AND,((DST-PORT,22),(NETWORK,tcp)),chain", Source: "tunsocks.yaml:13", Size: -1, Hits: 1, HitAt: t0.Add(-time.Hour)},
	{Index: 1, Type: "DOMAIN-SUFFIX", Payload: "example.com", Target: "corp",
		Line: "DOMAIN-SUFFIX,example.com,corp", Source: "tunsocks.yaml:14", Size: -1, Hits: 40, HitAt: t0.Add(-90 * time.Second)},
	{Index: 2, Type: "RULE-SET", Payload: "ads.txt", Target: "REJECT",
		Line: "RULE-SET,ads.txt,REJECT", Source: "tunsocks.yaml:15", Size: 1532},
	{Index: 3, Type: "MATCH", Target: "DIRECT", Line: "MATCH,DIRECT", Source: "tunsocks.yaml:16", Size: -1, Hits: 12, HitAt: t0.Add(-2 * time.Second)},
}

type fakeControl struct {
	mu       sync.Mutex
	mode     string
	global   string
	reloads  []string
	reloadFn func(path string) error
}

func (c *fakeControl) Settings() Settings {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Settings{
		Mode: c.mode, Global: c.global, ConfigPath: "/etc/tunsocks.yaml", IPv6: true,
		TUN: TUNSettings{Enable: true, Device: "tunsocks0", Stack: "gvisor"},
		DNS: DNSSettings{Enable: true, FakeIPRange: "198.18.0.0/15", Nameservers: []string{"1.1.1.1:53"}},
	}
}

func (c *fakeControl) SetMode(mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mode = mode
	return nil
}

func (c *fakeControl) SelectGlobal(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.global = name
	return nil
}

func (c *fakeControl) Reload(ctx context.Context, path string) error {
	c.mu.Lock()
	c.reloads = append(c.reloads, path)
	fn := c.reloadFn
	c.mu.Unlock()
	if fn != nil {
		return fn(path)
	}
	return nil
}

type fakeExplainer struct{ flows *fakeFlows }

func (e fakeExplainer) Explain(id string) (any, bool) {
	for _, f := range e.flows.Flows() {
		if f.ID == id {
			return map[string]any{
				"flow":     map[string]any{"network": f.Network, "src": f.Src.String(), "host": f.Host},
				"rule":     f.RuleLine,
				"outbound": f.Outbound,
			}, true
		}
	}
	return nil, false
}
