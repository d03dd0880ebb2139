package check

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/socksserver"
	"github.com/tunsocks/tunsocks/stun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func run(t *testing.T, o Options) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() || testing.Verbose() {
		var b bytes.Buffer
		r.WriteText(&b)
		t.Log("\n" + b.String())
	}
	return r
}

func TestOwnServerFullCone(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{})
	o := w.options("socks5://" + proxy)
	o.Rounds = 5
	r := run(t, o)
	want := map[string]Verdict{
		"reach.ipv4": Pass, "protocol": Pass, "socks5.methods": Pass,
		"connect.ipv4": Pass, "connect.domain": Pass,
		"connect.ports": Pass, "connect.refused": Pass, "connect.unroutable": Pass,
		"tls.intercept": Pass, "udp.associate": Pass, "udp.dns": Pass, "udp.control": Pass,
		"nat.mapping": Pass, "nat.filtering": Pass, "load": Pass,
	}
	if w.echo6.IsValid() {
		want["connect.ipv6"] = Pass
	}
	expectVerdicts(t, r, want)
	f := r.Facts
	if r.Verdict != Pass || r.ExitCode() != 0 {
		t.Errorf("verdict %s exit %d, want PASS 0", r.Verdict, r.ExitCode())
	}
	if f.Protocol != "socks5" || !contains(f.AuthMethods, "none") || f.Connect.RefusedReply != "refused" || f.Connect.UnroutableReply != "unreachable" {
		t.Errorf("facts %+v", f)
	}
	if f.NAT == nil || f.NAT.Mapping != "endpoint-independent" || f.NAT.Filtering != "endpoint-independent" || !strings.Contains(f.NAT.Summary, "full cone") || !f.NAT.SourceOK {
		t.Errorf("NAT facts %+v", f.NAT)
	}
	if f.UDP == nil || f.UDP.BoundZero || f.UDP.ReplySource != w.dns.String() || f.UDP.ReplySourceOK == nil || !*f.UDP.ReplySourceOK {
		t.Errorf("UDP facts %+v", f.UDP)
	}
	if f.Latency == nil || f.Latency.Rounds != 5 || f.Latency.Failures != 0 || f.Latency.ConnectP95MS < f.Latency.ConnectP50MS || f.Latency.FirstByteP50MS <= 0 {
		t.Errorf("latency %+v", f.Latency)
	}
	if f.TLS == nil || f.TLS.Intercepted {
		t.Errorf("TLS facts %+v", f.TLS)
	}
	checkConfig(t, r)
}

// checkConfig makes sure the suggested config is one tunsocks run takes.
func checkConfig(t *testing.T, r *Report) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(r.Config), "suggested.yaml")
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("suggested config does not validate: %v\n%s", err, r.Config)
	}
	return cfg
}

func TestEmulatedNATModes(t *testing.T) {
	w := newWorld(t)
	for _, c := range []struct {
		m, f       stun.Behaviour
		mapV, filV Verdict
		summary    string
	}{
		{stun.AddressPortDependent, stun.EndpointIndependent, Warn, Pass, "symmetric"},
		{stun.AddressDependent, stun.AddressDependent, Warn, Warn, "symmetric"},
		{stun.EndpointIndependent, stun.AddressDependent, Pass, Warn, "restricted cone"},
		{stun.EndpointIndependent, stun.AddressPortDependent, Pass, Warn, "port-restricted cone"},
	} {
		t.Run(c.m.String()+"/"+c.f.String(), func(t *testing.T) {
			proxy := startSOCKS(t, w, socksserver.Config{Emulate: socksserver.Emulation{UDPMapping: c.m, UDPFiltering: c.f}})
			r := run(t, w.options("socks5://"+proxy))
			expectVerdicts(t, r, map[string]Verdict{"nat.mapping": c.mapV, "nat.filtering": c.filV, "udp.dns": Pass})
			n := r.Facts.NAT
			if n == nil || n.Mapping != c.m.String() || n.Filtering != c.f.String() || !strings.HasPrefix(n.Summary, c.summary) {
				t.Errorf("NAT facts %+v, want %v/%v %q", n, c.m, c.f, c.summary)
			}
			if r.Verdict != Warn || r.ExitCode() != 0 {
				t.Errorf("verdict %s exit %d, want WARN 0", r.Verdict, r.ExitCode())
			}
		})
	}
}

func TestMisbehaviourSwitches(t *testing.T) {
	w := newWorld(t)
	t.Run("bound zero", func(t *testing.T) {
		proxy := startSOCKS(t, w, socksserver.Config{Emulate: socksserver.Emulation{BoundZero: true}})
		r := run(t, w.options("socks5://"+proxy))
		expectVerdicts(t, r, map[string]Verdict{"udp.associate": Warn, "udp.dns": Pass, "connect.ipv4": Pass})
		if f := r.Facts; f.UDP == nil || !f.UDP.BoundZero || !strings.HasPrefix(f.UDP.Relay, "127.0.0.1:") || !f.Connect.BoundZero {
			t.Errorf("facts %+v %+v", f.UDP, f.Connect)
		}
	})
	t.Run("accept bad password", func(t *testing.T) {
		proxy := startSOCKS(t, w, socksserver.Config{Users: map[string]string{"alice": "s3cret"}, Emulate: socksserver.Emulation{AcceptBadPassword: true}})
		r := run(t, w.options("socks5://alice:s3cret@"+proxy))
		expectVerdicts(t, r, map[string]Verdict{"socks5.methods": Pass, "socks5.auth": Warn, "connect.ipv4": Pass})
		if f := r.Facts; f.OpenProxy == nil || !*f.OpenProxy || strings.Join(f.AuthMethods, ",") != "username" {
			t.Errorf("facts open %v methods %v", f.OpenProxy, f.AuthMethods)
		}
		if strings.Contains(r.Config, "s3cret") || strings.Contains(r.Proxy, "s3cret") {
			t.Errorf("the password leaks into the report:\n%s\n%s", r.Proxy, r.Config)
		}
	})
	t.Run("honest auth", func(t *testing.T) {
		proxy := startSOCKS(t, w, socksserver.Config{Users: map[string]string{"alice": "s3cret"}})
		r := run(t, w.options("socks5://alice:s3cret@"+proxy))
		expectVerdicts(t, r, map[string]Verdict{"socks5.auth": Pass})
		if f := r.Facts; f.OpenProxy == nil || *f.OpenProxy {
			t.Errorf("open proxy %v, want false", f.OpenProxy)
		}
		// Without credentials: a FAIL that says what to put in the URL.
		r = run(t, w.options("socks5://"+proxy))
		p := r.ProbeByID("socks5.methods")
		if p == nil || p.Verdict != Fail || !strings.Contains(p.Summary, "socks5://user:pass@") || r.ExitCode() != 1 {
			t.Errorf("no credentials: %+v exit %d", p, r.ExitCode())
		}
	})
	t.Run("only 443", func(t *testing.T) {
		proxy := startSOCKS(t, w, socksserver.Config{Emulate: socksserver.Emulation{ConnectOnly443: true}})
		o := w.options("socks5://" + proxy)
		// The TLS probe's target on port 443 is what such a proxy allows;
		// the world's TLS server is elsewhere, so the port probe asks
		// for a port 443 that the server dials and finds closed or open:
		// either way it is not refused by the rules.
		o.TLSTarget = echoName + ":443"
		r := run(t, o)
		expectVerdicts(t, r, map[string]Verdict{"connect.ipv4": Fail, "connect.domain": Fail})
		p := r.ProbeByID("connect.ipv4")
		if p == nil || !strings.Contains(p.Summary, "0x02") {
			t.Errorf("connect.ipv4 %+v, want reply 0x02", p)
		}
		if r.ExitCode() != 1 {
			t.Errorf("exit %d, want 1", r.ExitCode())
		}
	})
	t.Run("open proxy with credentials", func(t *testing.T) {
		proxy := startSOCKS(t, w, socksserver.Config{})
		r := run(t, w.options("socks5://bob:pw@"+proxy))
		expectVerdicts(t, r, map[string]Verdict{"socks5.methods": Warn})
	})
}

func TestInterceptedTLS(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{})
	o := w.options("socks5://" + proxy)
	o.Roots = nil
	o.Roots = newPool() // trusts nothing: the test CA's leaf looks intercepted
	r := run(t, o)
	expectVerdicts(t, r, map[string]Verdict{"tls.intercept": Warn})
	if f := r.Facts.TLS; f == nil || !f.Intercepted || !strings.Contains(f.Issuer, "tunsocks test CA") {
		t.Errorf("TLS facts %+v", f)
	}
	if p := r.ProbeByID("tls.intercept"); p == nil || !strings.Contains(p.Summary, "tunsocks test CA") || !strings.Contains(p.Summary, "Install") {
		t.Errorf("summary %+v should name the CA and say to install it", p)
	}
}

func TestProtocolMismatch(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{})
	r := run(t, w.options("http://"+proxy))
	p := r.ProbeByID("protocol")
	if p == nil || p.Verdict != Fail || r.Facts.Protocol != "socks5" || r.Facts.SuggestedURL != "socks5://"+proxy || !strings.Contains(p.Summary, "use socks5://"+proxy) {
		t.Errorf("protocol %+v, facts %+v", p, r.Facts)
	}
	if len(r.Probes) != 2 || r.ExitCode() != 1 {
		t.Errorf("probes after a mismatch: %v, exit %d", verdicts(r), r.ExitCode())
	}
}

func TestSOCKS4(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{})
	r := run(t, w.options("socks4a://"+proxy))
	expectVerdicts(t, r, map[string]Verdict{"protocol": Pass, "connect.ipv4": Pass, "connect.domain": Pass,
		"connect.ipv6": Skip, "connect.refused": Pass, "udp.associate": Warn})
	if r.Facts.Connect.RefusedReply != "rejected" || r.Facts.UDP == nil || r.Facts.UDP.Supported {
		t.Errorf("facts %+v %+v", r.Facts.Connect, r.Facts.UDP)
	}
	cfg := checkConfig(t, r)
	if len(cfg.Rules) < 2 || !strings.Contains(r.Config, "NETWORK,udp,REJECT") {
		t.Errorf("suggested config keeps UDP on:\n%s", r.Config)
	}
	r = run(t, w.options("socks4://"+proxy))
	expectVerdicts(t, r, map[string]Verdict{"connect.ipv4": Pass, "connect.domain": Skip})
}

func TestIdleTimeouts(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{IdleTimeout: 300 * time.Millisecond, UDPIdleTimeout: 300 * time.Millisecond})
	o := w.options("socks5://" + proxy)
	o.STUN = ""
	o.Idle = time.Second
	r := run(t, o)
	expectVerdicts(t, r, map[string]Verdict{"idle.tcp": Warn, "idle.udp": Warn})
	cfg := checkConfig(t, r)
	if cfg.TCPIdle >= time.Second || cfg.UDPIdle >= time.Second {
		t.Errorf("suggested tcp-idle %v udp-idle %v, want below 1s\n%s", cfg.TCPIdle, cfg.UDPIdle, r.Config)
	}
	proxy = startSOCKS(t, w, socksserver.Config{})
	o = w.options("socks5://" + proxy)
	o.STUN = ""
	o.Idle = 500 * time.Millisecond
	r = run(t, o)
	expectVerdicts(t, r, map[string]Verdict{"idle.tcp": Pass, "idle.udp": Pass})
}

func TestNoProxy(t *testing.T) {
	w := newWorld(t)
	r := run(t, w.options("socks5://"+w.closed.String()))
	expectVerdicts(t, r, map[string]Verdict{"reach.ipv4": Fail})
	if len(r.Probes) != 1 || r.ExitCode() != 1 {
		t.Errorf("probes %v exit %d", verdicts(r), r.ExitCode())
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []Options{
		{},
		{Proxy: mustURL("ftp://x:1")},
		{Proxy: mustURL("socks5://x:1"), Target: "nohost"},
		{Proxy: mustURL("socks5://x:1"), Target: "a:99999"},
		{Proxy: mustURL("socks5://x:1"), STUN: "nope"},
	} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestJSONMatchesSchema: every key of a report's JSON is declared in
// schema.json, and every required key is present.
func TestJSONMatchesSchema(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{})
	o := w.options("socks5://" + proxy)
	o.Rounds, o.Idle = 2, 100*time.Millisecond
	r := run(t, o)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	json.Unmarshal(b, &doc)
	schema := loadSchema(t)
	validate(t, "$", schema, schema, doc)
	for _, p := range r.Probes {
		if !schemaProbeIDs(schema)[p.ID] {
			t.Errorf("probe id %q not listed in schema.json", p.ID)
		}
	}
}

// TestSuggestAllRules: every line suggest can write is one tunsocks run
// takes.
func TestSuggestAllRules(t *testing.T) {
	c, err := newChecker(Options{Proxy: mustURL("socks5://alice:s3cret@10.0.0.1:1080")})
	if err != nil {
		t.Fatal(err)
	}
	f := &c.r.Facts
	f.UDP = &UDPFacts{Supported: false}
	f.Connect.IPv4, f.Connect.IPv6, f.Connect.Domain, f.Connect.Only443 = ptr(true), ptr(false), ptr(false), ptr(true)
	f.Idle = &IdleFacts{HeldMS: 60000, TCPAlive: ptr(false), UDPAlive: ptr(false)}
	c.r.Config = suggest(c)
	cfg := checkConfig(t, c.r)
	for _, want := range []string{"NETWORK,udp,REJECT", "IP-CIDR6,::/0,REJECT", "DST-PORT,443", "enable: false", "alice:PASSWORD@"} {
		if !strings.Contains(c.r.Config, want) {
			t.Errorf("suggested config lacks %q:\n%s", want, c.r.Config)
		}
	}
	if len(cfg.Rules) != 4 || cfg.TCPIdle != 45*time.Second || cfg.UDPIdle != 45*time.Second || strings.Contains(c.r.Config, "s3cret") {
		t.Errorf("rules %d tcp-idle %v udp-idle %v:\n%s", len(cfg.Rules), cfg.TCPIdle, cfg.UDPIdle, c.r.Config)
	}
}

// TestRefusedByDefaultLoopbackDenial: a server that refuses its own
// loopback (tunsocks server's default) answers the default closed-port
// probe with 0x02; that is a quick, specific refusal, not a defect of the
// proxy, so the probe passes and says why.
func TestRefusedByDefaultLoopbackDenial(t *testing.T) {
	w := newWorld(t)
	proxy := startSOCKS(t, w, socksserver.Config{DenyLoopback: true})
	o := w.options("socks5://" + proxy)
	o.RefusedTarget = DefaultRefusedTarget
	r := run(t, o)
	p := r.ProbeByID("connect.refused")
	if p == nil || p.Verdict != Pass || r.Facts.Connect.RefusedReply != "not-allowed" || !strings.Contains(p.Summary, "refuses its own loopback") {
		t.Errorf("connect.refused %+v, facts %+v", p, r.Facts.Connect)
	}
	// Any other target the proxy does not allow still cannot tell.
	o.RefusedTarget = "127.0.0.1:2"
	r = run(t, o)
	if p := r.ProbeByID("connect.refused"); p == nil || p.Verdict != Warn {
		t.Errorf("connect.refused with another denied target %+v, want WARN", p)
	}
}
