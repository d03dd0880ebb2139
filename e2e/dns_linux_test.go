package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestFakeIPDNSAndUDP: the fake-IP DNS address answers over TCP too (dig
// +tcp, and a truncated answer retried over TCP), a TXT query for a
// proxied name goes through that name's proxy to the nameserver, and a
// connected UDP socket to a proxied name's fake IP gets its replies,
// whichever upstream carries them.
func TestFakeIPDNSAndUDP(t *testing.T) {
	for _, kind := range []upstreamKind{ourServer, dante} {
		t.Run(string(kind), func(t *testing.T) { testFakeIPDNSAndUDP(t, kind) })
	}
}

func testFakeIPDNSAndUDP(t *testing.T, kind upstreamKind) {
	testenv.NeedTool(t, "dig", "dnsutils")
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")

	e := newBareEnv(t)
	l := e.lab
	if err := l.Do(l.Remote, e.startRemoteServices); err != nil {
		t.Fatal(err)
	}
	const mark = 0x7473
	if err := l.EnableDirect(mark); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The nameserver of the config, on the remote host: a name with 60
	// addresses (too many for a 512-byte UDP answer), a TXT record for a
	// proxied name.
	nsArgs := []string{"--no-daemon", "--port=53", "--listen-address=" + remote4.String(), "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--log-queries", "--log-facility=" + filepath.Join(dir, "ns.log"), "--pid-file=", "--user=root",
		"--address=/proxied.lab/" + remote4.String(), "--txt-record=echo.proxied.lab,hello txt"}
	for i := 1; i <= 60; i++ {
		nsArgs = append(nsArgs, fmt.Sprintf("--host-record=many.lab,10.9.0.%d", i))
	}
	ns := e.start(l.Remote, dnsmasq, nsArgs...)
	// The upstream's own resolver, on the proxy host.
	if err := l.SetResolvConf(l.Proxy, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	e.start(l.Proxy, dnsmasq, "--no-daemon", "--port=53", "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--address=/proxied.lab/"+remote4.String())
	e.startUpstream(kind)

	cfg := filepath.Join(dir, "tunsocks.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`tun:
  name: tsk0
fwmark: %d
proxies:
  - name: up
    url: socks5://%s
rules:
  - DOMAIN-SUFFIX,proxied.lab,up
  - MATCH,DIRECT
dns:
  fake-ip-filter: [many.lab]
  nameserver: [%s]
`, mark, socksAddr, remote4)), 0o644)
	ts := e.start(l.App, binary, "--log-level", "debug", "run", "--config", cfg, "--summary-interval", "0")
	if err := l.RouteDefaultVia("tsk0", 15*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, ts.out.String())
	}
	defer func() {
		if t.Failed() {
			t.Logf("tunsocks:\n%s\nupstream:\n%s\nnameserver:\n%s%s", ts.out.String(), e.upstream.out.String(), ns.out.String(), readFile(filepath.Join(dir, "ns.log")))
		}
	}()
	dig := func(args ...string) string {
		t.Helper()
		out, err := e.inApp(15*time.Second, "dig", append([]string{"+tries=2", "+time=3", "@198.18.0.2"}, args...)...)
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return out
	}

	// DNS over TCP to the DNS address is answered there.
	out := dig("+tcp", "+short", "echo.proxied.lab", "A")
	fake, perr := netip.ParseAddr(strings.TrimSpace(out))
	if perr != nil || !netip.MustParsePrefix("198.18.0.0/15").Contains(fake) {
		t.Fatalf("dig +tcp echo.proxied.lab: %q; want a fake IP in 198.18.0.0/15", out)
	}
	// A real answer too large for UDP without EDNS comes back truncated,
	// and dig's retry over TCP gets all of it.
	out = dig("+noedns", "many.lab", "A")
	if !strings.Contains(out, "ANSWER: 60") {
		t.Errorf("dig +noedns many.lab (truncated over UDP, retried over TCP): want 60 answers\n%s", out)
	}
	// TXT for a proxied name: through the proxy to the nameserver, which
	// sees the query come from the proxy host, not from the app.
	if out := dig("+short", "echo.proxied.lab", "TXT"); strings.TrimSpace(out) != `"hello txt"` {
		t.Errorf("dig echo.proxied.lab TXT: %q, want \"hello txt\"", out)
	}
	ns.stop()
	qlog := readFile(filepath.Join(dir, "ns.log"))
	if !strings.Contains(qlog, "query[TXT] echo.proxied.lab from "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("the nameserver did not get the TXT query from the proxy host %s", lab.ProxyUp4.Addr())
	}
	if strings.Contains(qlog, "query[A] echo.proxied.lab") {
		t.Error("the proxied name's address was asked of the nameserver")
	}

	// A connected UDP socket to the proxied name's fake IP: the upstream
	// reports the reply from the address it resolved the name to, and the
	// socket still takes it, because it comes back from the fake IP.
	e.udpEcho(t, netip.AddrPortFrom(fake, echoPort))
}
