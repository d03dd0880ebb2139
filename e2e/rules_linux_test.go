package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestRulesAndDNS: two upstream SOCKS servers, DIRECT, REJECT, a chain, a
// PROCESS-NAME rule and fake-IP DNS, checked from both upstreams' logs and
// from the query log of the resolver tunsocks uses for real answers.
func TestRulesAndDNS(t *testing.T) {
	t.Run("gvisor", func(t *testing.T) { testRulesAndDNS(t) })
	// Fake IPs start at 198.18.0.3, among the system stack's fake peers.
	t.Run("system", func(t *testing.T) { testRulesAndDNS(t, "--tcp-stack", "system") })
}

func testRulesAndDNS(t *testing.T, runArgs ...string) {
	curl := testenv.NeedTool(t, "curl", "curl")
	testenv.NeedTool(t, "dig", "dnsutils")
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")

	e := newLabEnv(t)
	l := e.lab
	const mark = 0x7473
	if err := l.EnableDirect(mark); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names := []string{"via-a.lab", "via-b.lab", "chain.lab", "direct.lab", "filtered.lab", "blocked.lab", "proc.lab"}
	addrs := []string{}
	for _, n := range names {
		addrs = append(addrs, "--address=/"+n+"/"+remote4.String())
	}
	// The resolver tunsocks forwards real queries to, on the remote host:
	// its log must never show a proxied name. It is the second nameserver
	// of the config; nothing answers on the first (port 5353), so every
	// real answer below also proves the fallback to the next nameserver.
	localLog := filepath.Join(dir, "local-dns.log")
	local := e.start(l.Remote, dnsmasq, append([]string{"--no-daemon", "--port=53", "--listen-address=" + remote4.String(), "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--log-queries", "--log-facility=" + localLog, "--pid-file=", "--user=root"}, addrs...)...)
	// The upstreams' own resolver, on the proxy host.
	if err := l.SetResolvConf(l.Proxy, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	e.start(l.Proxy, dnsmasq, append([]string{"--no-daemon", "--port=53", "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--pid-file=", "--user=root"}, addrs...)...)
	// Two upstream SOCKS servers on one host: a, the first hop of the
	// chain, connects to b on its own address, which it refuses unless
	// --allow-loopback.
	upA := e.start(l.Proxy, binary, "server", "--listen", "10.201.0.1:1080", "--open", "--allow-loopback")
	upB := e.start(l.Proxy, binary, "server", "--listen", "10.201.0.1:1081", "--open")
	for _, a := range []string{"10.201.0.1:1080", "10.201.0.1:1081"} {
		waitDial(t, e, a)
	}

	curlB := filepath.Join(dir, "curl-b")
	copyFile(t, curl, curlB)
	cfg := filepath.Join(dir, "tunsocks.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`tun:
  name: tsk0
fwmark: %d
proxies:
  - name: a
    url: socks5://10.201.0.1:1080
  - name: b
    url: socks5://10.201.0.1:1081
  - name: a-then-b
    chain: [a, b]
rules:
  - AND,((NETWORK,udp),(DST-PORT,9)),REJECT
  - PROCESS-NAME,curl-b,b
  - DOMAIN,via-a.lab,a
  - DOMAIN,via-b.lab,b
  - DOMAIN,chain.lab,a-then-b
  - DOMAIN,direct.lab,DIRECT
  - DOMAIN-SUFFIX,blocked.lab,REJECT
  - MATCH,a
dns:
  fake-ip-filter: [filtered.lab]
  nameserver: [%s:5353, %s]
`, mark, remote4, remote4)), 0o644)
	ts := e.start(l.App, binary, append([]string{"--log-level", "debug", "run", "--config", cfg, "--summary-interval", "0"}, runArgs...)...)
	if err := l.RouteDefaultVia("tsk0", 15*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, ts.out.String())
	}
	if err := l.SetResolvConf(l.App, netip.MustParseAddr("198.18.0.2")); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("tunsocks:\n%s\nupstream a:\n%s\nupstream b:\n%s\nlocal dns:\n%s", ts.out.String(), upA.out.String(), upB.out.String(), readFile(localLog))
		}
	}()

	// dig gets a fake IP for a proxied name.
	out, err := e.inApp(10*time.Second, "dig", "+short", "+tries=2", "+time=2", "@198.18.0.2", "via-a.lab", "A")
	ip, perr := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil || perr != nil || !netip.MustParsePrefix("198.18.0.0/15").Contains(ip) {
		t.Fatalf("dig via-a.lab: %q %v; want a fake IP in 198.18.0.0/15", out, err)
	}

	get := func(prog, name string) (string, error) {
		return e.inApp(15*time.Second, prog, "-sS", "--max-time", "8", "http://"+name+"/")
	}
	// Proxied names arrive at the right upstream as domains.
	for _, c := range []struct{ name, at, notAt string }{{"via-a.lab", "a", "b"}, {"via-b.lab", "b", "a"}} {
		out, err := get(curl, c.name)
		if err != nil || !strings.Contains(out, "hello from remote") {
			t.Fatalf("curl %s: %v %s", c.name, err, out)
		}
		logs := map[string]*proc{"a": upA, "b": upB}
		if !logged(logs[c.at], "target="+c.name+":80") {
			t.Errorf("%s did not reach upstream %s as a domain", c.name, c.at)
		}
		if strings.Contains(logs[c.notAt].out.String(), c.name) {
			t.Errorf("%s reached upstream %s too", c.name, c.notAt)
		}
	}
	// A chain: a carries the connection to b, b gets the name.
	if out, err := get(curl, "chain.lab"); err != nil || !strings.Contains(out, "hello from remote") {
		t.Fatalf("curl chain.lab: %v %s", err, out)
	}
	if !logged(upA, "target=10.201.0.1:1081") || !logged(upB, "target=chain.lab:80") {
		t.Error("chain.lab did not go through a to b")
	}
	// DIRECT: neither upstream; the remote sees the app host's own address.
	out, err = get(curl, "direct.lab")
	if err != nil || !strings.Contains(out, "you are "+lab.AppUplink4.Addr().String()) {
		t.Errorf("curl direct.lab: %v %q; want the remote to see %s", err, out, lab.AppUplink4.Addr())
	}
	if strings.Contains(upA.out.String()+upB.out.String(), "direct.lab") {
		t.Error("direct.lab reached an upstream")
	}
	// REJECT: refused at once.
	start := time.Now()
	// curl's exit code 7 is "failed to connect": the RST it got for its SYN.
	if out, err := get(curl, "ads.blocked.lab"); err == nil || !strings.Contains(out, "(7)") {
		t.Errorf("curl ads.blocked.lab: %v %q; want a refused connection", err, out)
	}
	t.Logf("REJECT answered in %v", time.Since(start))
	// REJECT for UDP: an ICMP port unreachable, so a connected socket fails
	// at once with ECONNREFUSED.
	for _, ip := range []netip.Addr{remote4, remote6} {
		uc, err := e.app.DialContext(e.ctx, "udp", netip.AddrPortFrom(ip, 9).String())
		if err != nil {
			t.Fatal(err)
		}
		uc.Write([]byte("rejected"))
		uc.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := uc.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("UDP to %s under a REJECT rule: %v, want connection refused (ICMP port unreachable)", ip, err)
		}
		uc.Close()
	}
	// PROCESS-NAME: the same name from curl-b goes to b.
	if out, err := get(curlB, "proc.lab"); err != nil || !strings.Contains(out, "hello from remote") {
		t.Fatalf("curl-b proc.lab: %v %s", err, out)
	}
	if !logged(upB, "target=proc.lab:80") || strings.Contains(upA.out.String(), "proc.lab") {
		t.Error("curl-b's flow was not routed to b by PROCESS-NAME")
	}
	if out, err := get(curl, "proc.lab"); err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("curl proc.lab: %v %s", err, out)
	}
	if !logged(upA, "target=proc.lab:80") {
		t.Error("plain curl's flow to proc.lab did not take MATCH,a")
	}
	// A filtered name gets a real answer.
	out, _ = e.inApp(10*time.Second, "dig", "+short", "+tries=2", "+time=2", "@198.18.0.2", "filtered.lab", "A")
	if strings.TrimSpace(out) != remote4.String() {
		t.Errorf("filtered.lab answered %q, want the real %s", out, remote4)
	}

	// The local resolver saw the DIRECT and filtered names, never a proxied one.
	local.stop()
	qlog := readFile(localLog)
	for _, n := range []string{"direct.lab", "filtered.lab"} {
		if !strings.Contains(qlog, "query[A] "+n) {
			t.Errorf("the local resolver never saw %s", n)
		}
	}
	for _, n := range []string{"via-a.lab", "via-b.lab", "chain.lab", "blocked.lab", "proc.lab"} {
		if strings.Contains(qlog, n) {
			t.Errorf("proxied or rejected name %s leaked to the local resolver", n)
		}
	}
}

// logged waits (up to 20 s, which only a failure waits out) for s in p's
// output: servers log a request when it ends, a moment after the client is
// done, later on a loaded machine.
func logged(p *proc, s string) bool {
	for deadline := time.Now().Add(20 * time.Second); ; {
		if strings.Contains(p.out.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitDial(t *testing.T, e *env, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := e.app.DialContext(e.ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never accepted: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
