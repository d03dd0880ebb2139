package policy

import (
	"sync"
	"testing"

	"github.com/tunsocks/tunsocks/dns"
	"github.com/tunsocks/tunsocks/router"
)

// TestLiveSwap: a decision made before a swap keeps its outbound; every
// decision after it uses the new policy.
func TestLiveSwap(t *testing.T) {
	old := newEnv(t, "DOMAIN-SUFFIX,corp.test,corp\nMATCH,DIRECT\n", nil)
	next := newEnv(t, "DOMAIN-SUFFIX,corp.test,DIRECT\nMATCH,corp\n", nil)
	l := NewLive(old.p)
	before := l.Decide(meta("tcp", "", "", "www.corp.test"))
	if before.Outbound != old.corp {
		t.Fatalf("before the swap: %v", before.Rule)
	}
	if prev := l.Swap(next.p); prev != old.p {
		t.Error("Swap did not return the policy it replaced")
	}
	after := l.Decide(meta("tcp", "", "", "www.corp.test"))
	if after.Outbound != next.direct || before.Outbound != old.corp {
		t.Errorf("after the swap: %s (%v); the earlier decision now says %v", after.Rule, after.Outbound, before.Outbound)
	}
	if d := l.Decide(meta("tcp", "", "192.0.2.1:80", "")); d.Outbound != next.corp {
		t.Errorf("MATCH after the swap: %s", d.Rule)
	}
}

// TestLiveModes: global sends everything to the selected outbound (or the
// default), direct to DIRECT, and DNS follows: a name going DIRECT gets a
// real answer.
func TestLiveModes(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	l := NewLive(e.p)
	m := meta("tcp", "", "", "blocked.test")
	if d := l.Decide(m); d.Action != router.Reject || l.DNSRoute("blocked.test") != dns.RouteFakeIP {
		t.Fatalf("rule mode: %s", d.Rule)
	}
	l.SetMode(ModeDirect)
	if d := l.Decide(m); d.Action != router.Proxy || d.Outbound != e.direct || d.Match != nil {
		t.Errorf("direct mode: %s", d.Rule)
	}
	if l.DNSRoute("blocked.test") != dns.RouteDirect {
		t.Error("direct mode: a name is not answered for real")
	}
	l.SetMode(ModeGlobal)
	if err := l.SelectGlobal("nope"); err == nil {
		t.Error("selected an outbound that does not exist")
	}
	if err := l.SelectGlobal("corp"); err != nil {
		t.Fatal(err)
	}
	if d := l.Decide(m); d.Outbound != e.corp || l.DNSRoute("direct.test") != dns.RouteFakeIP {
		t.Errorf("global mode through corp: %s", d.Rule)
	}
	if err := l.SelectGlobal("DIRECT"); err != nil {
		t.Fatal(err)
	}
	if d := l.Decide(m); d.Outbound != e.direct {
		t.Errorf("global mode through DIRECT: %s", d.Rule)
	}
	// A selection the new policy lacks falls back to its first proxy.
	l.SelectGlobal("corp")
	next := newEnv(t, "MATCH,DIRECT\n", func(c *Config) { delete(c.Outbounds, "corp") })
	l.Swap(next.p)
	if g := l.Global(); g.Name() != "both" {
		t.Errorf("global after the selection went away: %s", g.Name())
	}
	if _, err := ParseMode("fast"); err == nil {
		t.Error("ParseMode accepted fast")
	}
}

// TestRuleHits: the router counts a decision's hits; Rules shows them.
func TestRuleHits(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	for range 3 {
		d := e.p.Decide(meta("tcp", "", "", "x.corp.test"))
		d.Hits.Hit()
	}
	e.p.DNSRoute("x.corp.test") // a name decision is no flow: not counted
	rs := e.p.Rules()
	if len(rs) != 9 || rs[3].Type != "DOMAIN-SUFFIX" || rs[3].Payload != "corp.test" || rs[3].Hits != 3 || rs[3].LastHit.IsZero() {
		t.Errorf("rule 4: %+v", rs[3])
	}
	if rs[0].Hits != 0 {
		t.Errorf("rule 1 hit %d times", rs[0].Hits)
	}
	if d := e.p.Decide(meta("tcp", "", "", "")); d.Match == nil || d.Match.Index != 8 || d.Hits != &e.p.hits[8] {
		t.Errorf("MATCH decision: %+v", d)
	}
}

func TestOutbounds(t *testing.T) {
	e := newEnv(t, ruleText, nil)
	var names []string
	for _, o := range e.p.Outbounds() {
		names = append(names, o.Name())
	}
	if len(names) != 3 || names[0] != "DIRECT" || names[1] != "both" || names[2] != "corp" {
		t.Errorf("outbounds %v", names)
	}
	if o, ok := e.p.Outbound("corp"); !ok || o != e.corp {
		t.Error("Outbound(corp)")
	}
}

// TestLiveConcurrent decides while swapping and switching modes (-race).
func TestLiveConcurrent(t *testing.T) {
	a, b := newEnv(t, ruleText, nil), newEnv(t, "MATCH,corp\n", nil)
	l := NewLive(a.p)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 500 {
				if d := l.Decide(meta("tcp", "", "", "x.corp.test")); d.Action == router.Proxy && d.Outbound == nil {
					t.Error("a decision without an outbound")
					return
				}
				if i == 0 && j%50 == 0 {
					l.Swap([]*Policy{a.p, b.p}[j/50%2])
					l.SetMode(Mode(j / 50 % 3))
				}
			}
		}()
	}
	wg.Wait()
}
