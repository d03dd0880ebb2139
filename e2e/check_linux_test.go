package e2e

// `tunsocks check` against tunsocks' own server in every emulated NAT mode
// and misbehaviour switch, and against real servers (dante, microsocks,
// tinyproxy, mitmproxy), all inside a lab: check runs in the app host, the
// proxy in the proxy host, the targets (echo, TLS, DNS and an RFC 5780 STUN
// responder on two addresses, itself `tunsocks server --stun`) in the
// remote host.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/check"
	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stun"
)

var (
	stunPrimary = netip.AddrPortFrom(remote4, 3478)
	stunAlt     = netip.MustParseAddrPort("10.202.0.3:3479") // a second address on the remote host
)

const checkName = "echo.test"

// checkEnv is a lab with the check targets on the remote host.
type checkEnv struct {
	*env
	caFile string
}

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	e := newBareEnv(t)
	l := e.lab
	ce := &checkEnv{env: e}
	if err := lab.WithNetlink(l.Remote, func(h *netlink.Handle) error {
		link, err := h.LinkByName("down0")
		if err != nil {
			return err
		}
		return h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: stunAlt.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n%s %s\n", remote4, checkName, remote6, checkName)
	for _, ns := range []string{l.App, l.Proxy} {
		dir := filepath.Join("/etc/netns", ns)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ca, cert := testenv.CA(t, checkName)
	ce.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ce.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Do(l.Remote, func() error {
		if err := e.startRemoteServices(); err != nil {
			return err
		}
		for _, ip := range []netip.Addr{remote4, remote6} {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 443).String())
			if err != nil {
				return err
			}
			e.serve(ln, func(c net.Conn) {
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() == nil {
					echoConn(tc)
				}
			}, nil)
		}
		return ce.dnsServer()
	}); err != nil {
		t.Fatal(err)
	}
	// The STUN responder is tunsocks' own, started as a user would.
	e.start(l.Remote, binary, "server", "--listen", "127.0.0.1:1080", "--stun", stunPrimary.String()+","+stunAlt.String())
	ce.waitSTUN(t)
	return ce
}

// dnsServer answers every A query with the remote host's address.
func (ce *checkEnv) dnsServer() error {
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(remote4, 53).String())
	if err != nil {
		return err
	}
	ce.wg.Add(2)
	go func() { defer ce.wg.Done(); <-ce.ctx.Done(); pc.Close() }()
	go func() {
		defer ce.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
				continue
			}
			m.Header.Response = true
			m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
				Body: &dnsmessage.AResource{A: remote4.As4()}}}
			if out, err := m.Pack(); err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return nil
}

// waitSTUN waits until the remote STUN responder answers (from the proxy
// host, which can reach it).
func (ce *checkEnv) waitSTUN(t *testing.T) {
	t.Helper()
	var pc net.PacketConn
	if err := netns.Do(ce.lab.Proxy, func() (err error) {
		pc, err = net.ListenPacket("udp", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithTimeout(ce.ctx, 200*time.Millisecond)
		_, err := stun.Request(ctx, pc, net.UDPAddrFromAddrPort(stunPrimary), 0)
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatal("the STUN responder (tunsocks server --stun) does not answer")
}

// proxy starts a server in the proxy host and waits until it accepts on
// addr; the returned stop ends it.
func (ce *checkEnv) proxy(t *testing.T, addr string, name string, args ...string) *proc {
	t.Helper()
	p := ce.start(ce.lab.Proxy, name, args...)
	// mitmdump (Python) takes seconds to start, more on a loaded machine.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := ce.app.DialContext(ce.ctx, "tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept on %s: %v\n%s", name, addr, err, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(p.stop)
	return p
}

func (ce *checkEnv) ourServer(t *testing.T, args ...string) *proc {
	// --allow-loopback: check's default closed port is port 1 of the
	// proxy host itself, which the server otherwise refuses (0x02).
	return ce.proxy(t, socksAddr.String(), binary, append([]string{"server", "--listen", socksAddr.String(), "--open", "--allow-loopback", "--udp-idle-timeout", "30s"}, args...)...)
}

// check runs `tunsocks check --json` in the app host against proxyURL and
// returns the report and the exit code. The lab CA is the system's root
// for it (SSL_CERT_FILE), so a TLS target not intercepted verifies.
func (ce *checkEnv) check(t *testing.T, proxyURL string, args ...string) (*check.Report, int) {
	t.Helper()
	out, stderr, code := ce.checkRaw(t, proxyURL, append([]string{"--json"}, args...)...)
	var r check.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check --json output: %v\n%s\nstderr:\n%s", err, out, stderr)
	}
	if t.Failed() || testing.Verbose() {
		var b bytes.Buffer
		r.WriteText(&b)
		t.Logf("exit %d\n%s", code, b.String())
	}
	if code != r.ExitCode() {
		t.Errorf("exit code %d, report says %d", code, r.ExitCode())
	}
	return &r, code
}

func (ce *checkEnv) checkRaw(t *testing.T, proxyURL string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	base := []string{"--target", checkName + ":7", "--tls-target", checkName + ":443", "--udp-target", netip.AddrPortFrom(remote4, 53).String(),
		"--stun", stunPrimary.String(), "--timeout", "6s", "--unroutable-target", "192.0.2.1:80"}
	ctx, cancel := context.WithTimeout(ce.ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append(append(append([]string{"netns", "exec", ce.lab.App, binary, "check"}, base...), args...), proxyURL)...)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ce.caFile)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tunsocks check: %v\n%s", err, e.String())
	}
	return o.String(), e.String(), code
}

func wantVerdicts(t *testing.T, r *check.Report, want map[string]check.Verdict) {
	t.Helper()
	for id, v := range want {
		p := r.ProbeByID(id)
		if p == nil || p.Verdict != v {
			t.Errorf("%s = %+v, want %s", id, p, v)
		}
	}
}

func isTrue(b *bool) bool  { return b != nil && *b }
func isFalse(b *bool) bool { return b != nil && !*b }

// TestCheckOwnServer: tunsocks' own server in its default mode and in each
// emulated NAT mode and misbehaviour switch.
func TestCheckOwnServer(t *testing.T) {
	ce := newCheckEnv(t)
	proxyURL := "socks5://" + socksAddr.String()
	t.Run("default", func(t *testing.T) {
		ce.ourServer(t)
		r, code := ce.check(t, proxyURL, "--rounds", "5")
		wantVerdicts(t, r, map[string]check.Verdict{
			"reach.ipv4": check.Pass, "protocol": check.Pass, "socks5.methods": check.Pass,
			"connect.ipv4": check.Pass, "connect.domain": check.Pass, "connect.ipv6": check.Pass, "connect.ports": check.Pass,
			"connect.refused": check.Pass, "connect.unroutable": check.Pass, "tls.intercept": check.Pass,
			"udp.associate": check.Pass, "udp.dns": check.Pass, "udp.control": check.Pass,
			"nat.mapping": check.Pass, "nat.filtering": check.Pass, "load": check.Pass,
		})
		f := r.Facts
		if code != 0 || r.Verdict != check.Pass {
			t.Errorf("exit %d verdict %s, want 0 PASS", code, r.Verdict)
		}
		if f.Connect.RefusedReply != "refused" || f.Connect.UnroutableReply != "unreachable" || !isTrue(f.Connect.IPv6) || !isTrue(f.Connect.Domain) {
			t.Errorf("connect facts %+v", f.Connect)
		}
		if f.NAT == nil || f.NAT.Mapping != "endpoint-independent" || f.NAT.Filtering != "endpoint-independent" || !f.NAT.SourceOK {
			t.Errorf("NAT facts %+v", f.NAT)
		}
		if f.UDP == nil || f.UDP.ReplySource != netip.AddrPortFrom(remote4, 53).String() || !isTrue(f.UDP.EndsWithControl) {
			t.Errorf("UDP facts %+v", f.UDP)
		}
		if f.Latency == nil || f.Latency.Failures != 0 || f.Latency.Rounds != 5 {
			t.Errorf("latency %+v", f.Latency)
		}
	})
	for _, c := range []struct {
		flags              []string
		mapping, filtering string
		mapV, filV         check.Verdict
	}{
		{[]string{"--test-udp-mapping", "adm"}, "address-dependent", "endpoint-independent", check.Warn, check.Pass},
		{[]string{"--test-udp-mapping", "apdm"}, "address-and-port-dependent", "endpoint-independent", check.Warn, check.Pass},
		{[]string{"--test-udp-filtering", "adf"}, "endpoint-independent", "address-dependent", check.Pass, check.Warn},
		{[]string{"--test-udp-filtering", "apdf"}, "endpoint-independent", "address-and-port-dependent", check.Pass, check.Warn},
		{[]string{"--test-udp-mapping", "apdm", "--test-udp-filtering", "apdf"}, "address-and-port-dependent", "address-and-port-dependent", check.Warn, check.Warn},
	} {
		t.Run(strings.Join(c.flags, " "), func(t *testing.T) {
			ce.ourServer(t, c.flags...)
			r, code := ce.check(t, proxyURL)
			wantVerdicts(t, r, map[string]check.Verdict{"nat.mapping": c.mapV, "nat.filtering": c.filV, "udp.dns": check.Pass})
			if n := r.Facts.NAT; n == nil || n.Mapping != c.mapping || n.Filtering != c.filtering || !n.SourceOK {
				t.Errorf("NAT facts %+v, want %s/%s", n, c.mapping, c.filtering)
			}
			if code != 0 || r.Verdict != check.Warn {
				t.Errorf("exit %d verdict %s, want 0 WARN", code, r.Verdict)
			}
		})
	}
	t.Run("bnd-zero", func(t *testing.T) {
		ce.ourServer(t, "--test-bnd-zero")
		r, _ := ce.check(t, proxyURL)
		wantVerdicts(t, r, map[string]check.Verdict{"udp.associate": check.Warn, "udp.dns": check.Pass, "connect.ipv4": check.Pass})
		if f := r.Facts; f.UDP == nil || !f.UDP.BoundZero || f.UDP.Relay == "" || !strings.HasPrefix(f.UDP.Relay, socksAddr.Addr().String()+":") || !f.Connect.BoundZero {
			t.Errorf("facts udp %+v connect %+v", f.UDP, f.Connect)
		}
	})
	t.Run("accept-bad-password", func(t *testing.T) {
		ce.ourServer(t, "--user", "alice:s3cret", "--test-accept-bad-password")
		r, _ := ce.check(t, "socks5://alice:s3cret@"+socksAddr.String())
		wantVerdicts(t, r, map[string]check.Verdict{"socks5.methods": check.Pass, "socks5.auth": check.Warn})
		if !isTrue(r.Facts.OpenProxy) {
			t.Errorf("open_proxy %v, want true", r.Facts.OpenProxy)
		}
	})
	t.Run("connect-only-443", func(t *testing.T) {
		ce.ourServer(t, "--test-connect-only-443")
		r, code := ce.check(t, proxyURL)
		wantVerdicts(t, r, map[string]check.Verdict{"connect.ipv4": check.Fail, "connect.ports": check.Warn, "tls.intercept": check.Pass})
		if !isTrue(r.Facts.Connect.Only443) || code != 1 {
			t.Errorf("only_443 %v exit %d, want true 1", r.Facts.Connect.Only443, code)
		}
		if !strings.Contains(r.Config, "DST-PORT,443") {
			t.Errorf("suggested config does not send other ports elsewhere:\n%s", r.Config)
		}
	})
	t.Run("host-unreachable", func(t *testing.T) {
		// An address on the proxy's link that nobody has: the proxy's
		// kernel gives up on ARP and the server answers 0x04 within the
		// probe's timeout.
		ce.ourServer(t)
		r, _ := ce.check(t, proxyURL, "--unroutable-target", "10.202.0.99:80")
		wantVerdicts(t, r, map[string]check.Verdict{"connect.unroutable": check.Pass, "connect.refused": check.Pass})
		if f := r.Facts.Connect; f.UnroutableReply != "unreachable" || !strings.Contains(f.UnroutableText, "0x04") || f.RefusedReply != "refused" {
			t.Errorf("connect facts %+v", f)
		}
	})
	t.Run("text and usage", func(t *testing.T) {
		ce.ourServer(t)
		out, stderr, code := ce.checkRaw(t, proxyURL)
		if code != 0 || !strings.Contains(out, "PASS  nat.mapping") || !strings.Contains(out, "full cone") || !strings.Contains(out, "Result: PASS") {
			t.Errorf("exit %d, text output:\n%s\n%s", code, out, stderr)
		}
		t.Logf("text output:\n%s", out)
		if _, stderr, code := ce.checkRaw(t, "socks5://"+socksAddr.String(), "--rounds", "-3"); code != 2 || !strings.Contains(stderr, "--rounds") {
			t.Errorf("bad usage: exit %d, %s", code, stderr)
		}
	})
}

// TestCheckDante: Dante's UDP relay and its username method.
func TestCheckDante(t *testing.T) {
	ce := newCheckEnv(t)
	danted := testenv.NeedTool(t, "danted", "dante-server")
	conf := func(method string) string {
		f := filepath.Join(t.TempDir(), "danted.conf")
		os.WriteFile(f, []byte(fmt.Sprintf(`logoutput: stderr
internal: %s port = %d
external: up0
socksmethod: %s
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate bind udpreply }
socks pass { from: 0.0.0.0/0 to: ::/0 command: connect udpassociate bind udpreply }
socks pass { from: ::/0 to: 0.0.0.0/0 command: udpreply }
`, socksAddr.Addr(), socksAddr.Port(), method)), 0o644)
		return f
	}
	t.Run("none", func(t *testing.T) {
		ce.proxy(t, socksAddr.String(), danted, "-f", conf("none"), "-N", "1")
		r, _ := ce.check(t, "socks5://"+socksAddr.String())
		wantVerdicts(t, r, map[string]check.Verdict{"protocol": check.Pass, "socks5.methods": check.Pass,
			"connect.ipv4": check.Pass, "connect.domain": check.Pass, "udp.associate": check.Pass, "udp.dns": check.Pass})
		if r.Facts.NAT == nil || r.Facts.NAT.Mapping == "unknown" {
			t.Errorf("NAT facts %+v", r.Facts.NAT)
		}
	})
	t.Run("username", func(t *testing.T) {
		user, pass := testenv.SystemUser(t)
		ce.proxy(t, socksAddr.String(), danted, "-f", conf("username"), "-N", "1")
		r, _ := ce.check(t, fmt.Sprintf("socks5://%s:%s@%s", user, pass, socksAddr))
		wantVerdicts(t, r, map[string]check.Verdict{"socks5.methods": check.Pass, "socks5.auth": check.Pass, "connect.ipv4": check.Pass, "udp.dns": check.Pass})
		if !isFalse(r.Facts.OpenProxy) || strings.Join(r.Facts.AuthMethods, ",") != "username" {
			t.Errorf("open_proxy %v methods %v", r.Facts.OpenProxy, r.Facts.AuthMethods)
		}
	})
}

// TestCheckMicrosocks: no UDP ASSOCIATE, said clearly.
func TestCheckMicrosocks(t *testing.T) {
	ce := newCheckEnv(t)
	ms := testenv.NeedTool(t, "microsocks", "microsocks")
	ce.proxy(t, socksAddr.String(), ms, "-i", socksAddr.Addr().String(), "-p", fmt.Sprint(socksAddr.Port()))
	r, code := ce.check(t, "socks5://"+socksAddr.String())
	wantVerdicts(t, r, map[string]check.Verdict{"connect.ipv4": check.Pass, "connect.domain": check.Pass, "udp.associate": check.Fail, "nat.mapping": check.Skip})
	if u := r.Facts.UDP; u == nil || u.Supported || !strings.Contains(u.Reason, "does not support UDP ASSOCIATE") {
		t.Errorf("UDP facts %+v", u)
	}
	if code != 1 || !strings.Contains(r.Config, "NETWORK,udp,REJECT") {
		t.Errorf("exit %d, config:\n%s", code, r.Config)
	}
}

// TestCheckTinyproxy: an HTTP CONNECT proxy with Basic auth that allows
// only port 443.
func TestCheckTinyproxy(t *testing.T) {
	ce := newCheckEnv(t)
	tp := testenv.NeedTool(t, "tinyproxy", "tinyproxy")
	addr := netip.AddrPortFrom(socksAddr.Addr(), 8888)
	conf := filepath.Join(t.TempDir(), "tinyproxy.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`Port %d
Listen %s
Timeout 30
MaxClients 50
Allow %s
BasicAuth alice s3cret
ConnectPort 443
LogLevel Info
`, addr.Port(), addr.Addr(), lab.AppUplink4.Masked())), 0o644)
	ce.proxy(t, addr.String(), tp, "-d", "-c", conf)
	r, code := ce.check(t, "http://alice:s3cret@"+addr.String())
	wantVerdicts(t, r, map[string]check.Verdict{"protocol": check.Pass, "http.auth": check.Pass, "connect.ipv4": check.Fail,
		"connect.ports": check.Warn, "tls.intercept": check.Pass, "udp.associate": check.Warn})
	if r.Facts.Protocol != "http" || !isTrue(r.Facts.Connect.Only443) || !isFalse(r.Facts.OpenProxy) || code != 1 {
		t.Errorf("facts %+v exit %d", r.Facts, code)
	}
	// Without credentials: a FAIL that says where they go.
	r, _ = ce.check(t, "http://"+addr.String())
	if p := r.ProbeByID("http.auth"); p == nil || p.Verdict != check.Fail || !strings.Contains(p.Summary, "http://user:pass@") {
		t.Errorf("http.auth without credentials: %+v", p)
	}
}

// TestCheckMitmproxy: mitmdump intercepts TLS; the WARN names its CA.
func TestCheckMitmproxy(t *testing.T) {
	ce := newCheckEnv(t)
	md := testenv.NeedTool(t, "mitmdump", "mitmproxy")
	addr := netip.AddrPortFrom(socksAddr.Addr(), 8080)
	confdir := t.TempDir()
	ce.proxy(t, addr.String(), md, "--listen-host", addr.Addr().String(), "--listen-port", fmt.Sprint(addr.Port()),
		"--set", "confdir="+confdir, "--ssl-insecure", "-q")
	r, _ := ce.check(t, "http://"+addr.String())
	wantVerdicts(t, r, map[string]check.Verdict{"protocol": check.Pass, "connect.domain": check.Pass, "tls.intercept": check.Warn})
	f := r.Facts.TLS
	if f == nil || !f.Intercepted || !strings.Contains(f.Issuer, "mitmproxy") || f.Tool != "mitmproxy" {
		t.Errorf("TLS facts %+v", f)
	}
	if p := r.ProbeByID("tls.intercept"); p == nil || !strings.Contains(p.Summary, "mitmproxy") || !strings.Contains(p.Summary, "Install that CA") {
		t.Errorf("tls.intercept %+v", p)
	}
}
