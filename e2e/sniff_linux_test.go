package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/sniff"
)

// TestSniff: apps that resolve names themselves (curl --resolve, a QUIC
// client given an address) connect to real addresses; tunsocks reads the
// names from TLS, HTTP and QUIC Initials, the DOMAIN rules pick the
// upstream, and the upstream receives the name. Server-first flows still
// work, and a flow that needs no name is still refused in its handshake.
func TestSniff(t *testing.T) {
	t.Run("gvisor", func(t *testing.T) { testSniff(t) })
	t.Run("system", func(t *testing.T) { testSniff(t, "--tcp-stack", "system") })
}

const (
	httpsPort    = 443
	sshPort      = 22   // server-first by default: dialed at once
	bannerPort   = 2222 // server-first too, but not listed: dialed after sniff-timeout
	sniffedProxy = "10.201.0.1:1080"
	otherProxy   = "10.201.0.1:1081"
	sshBanner    = "SSH-2.0-lab\r\n"
	// Long enough that an app's first bytes arrive within it on a loaded
	// CI host (curl's ClientHello once took more than 200 ms, and the
	// flow went by address); the server-first flow on bannerPort waits
	// it out once.
	sniffTimeoutArg = "2s"
)

func testSniff(t *testing.T, runArgs ...string) {
	curl := testenv.NeedTool(t, "curl", "curl")
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")

	e := newBareEnv(t)
	l := e.lab
	quicSeen := &sniffedDatagrams{}
	if err := l.Do(l.Remote, func() error {
		if err := e.startRemoteServices(); err != nil {
			return err
		}
		return e.startSniffServices(quicSeen)
	}); err != nil {
		t.Fatal(err)
	}
	const mark = 0x7473
	if err := l.EnableDirect(mark); err != nil {
		t.Fatal(err)
	}
	// The upstreams resolve the names the apps never asked tunsocks for.
	if err := l.SetResolvConf(l.Proxy, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range []string{"tls.lab", "http.lab", "other.lab"} {
		addrs = append(addrs, "--address=/"+n+"/"+remote4.String())
	}
	e.start(l.Proxy, dnsmasq, append([]string{"--no-daemon", "--port=53", "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--pid-file=", "--user=root"}, addrs...)...)
	upA := e.start(l.Proxy, binary, "server", "--listen", sniffedProxy, "--open")
	upB := e.start(l.Proxy, binary, "server", "--listen", otherProxy, "--open")
	waitDial(t, e, sniffedProxy)
	waitDial(t, e, otherProxy)

	cfg := filepath.Join(t.TempDir(), "tunsocks.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`tun:
  name: tsk0
fwmark: %d
sniff-timeout: %s
proxies:
  - name: a
    url: socks5://%s
  - name: b
    url: socks5://%s
rules:
  - AND,((NETWORK,tcp),(DST-PORT,%d)),b
  - DOMAIN,tls.lab,a
  - DOMAIN,http.lab,a
  - DOMAIN,quic.lab,a
  - DOMAIN,blocked.lab,REJECT
  - NETWORK,udp,DIRECT
  - MATCH,b
`, mark, sniffTimeoutArg, sniffedProxy, otherProxy, closedPort)), 0o644)
	ts := e.start(l.App, binary, append([]string{"--log-level", "debug", "run", "--config", cfg, "--summary-interval", "0"}, runArgs...)...)
	if err := l.RouteDefaultVia("tsk0", 15*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, ts.out.String())
	}
	defer func() {
		if t.Failed() {
			t.Logf("tunsocks:\n%s\nupstream a:\n%s\nupstream b:\n%s", ts.out.String(), upA.out.String(), upB.out.String())
		}
	}()

	curlGet := func(url, name string, port int) (string, error) {
		return e.inApp(15*time.Second, curl, "-sSk", "--max-time", "8",
			"--resolve", fmt.Sprintf("%s:%d:%s", name, port, remote4), url)
	}

	t.Run("tls-sni", func(t *testing.T) {
		// No DNS at all: curl connects to the address, tunsocks reads the
		// ClientHello's server_name; rule DOMAIN,tls.lab,a sends the flow
		// to a, which is asked for the name and resolves it itself.
		out, err := curlGet("https://tls.lab/", "tls.lab", httpsPort)
		if err != nil || !strings.Contains(out, "hello over tls") {
			t.Fatalf("curl https://tls.lab/: %v %q", err, out)
		}
		if !logged(upA, "target=tls.lab:443") {
			t.Error("upstream a was not asked for tls.lab:443")
		}
		if strings.Contains(upB.out.String(), "tls.lab") {
			t.Error("tls.lab reached upstream b")
		}
		if !logged(ts, "sniffed=tls.lab") {
			t.Error("the flow log line does not name the sniffed host")
		}
	})
	t.Run("http-host", func(t *testing.T) {
		out, err := curlGet("http://http.lab/", "http.lab", httpPort)
		if err != nil || !strings.Contains(out, "hello from remote") {
			t.Fatalf("curl http://http.lab/: %v %q", err, out)
		}
		if !logged(upA, "target=http.lab:80") {
			t.Error("upstream a was not asked for http.lab:80")
		}
	})
	t.Run("other-name-takes-match", func(t *testing.T) {
		out, err := curlGet("https://other.lab/", "other.lab", httpsPort)
		if err != nil || !strings.Contains(out, "hello over tls") {
			t.Fatalf("curl https://other.lab/: %v %q", err, out)
		}
		if !logged(upB, "target=other.lab:443") || strings.Contains(upA.out.String(), "other.lab") {
			t.Error("other.lab did not reach upstream b (MATCH) by name")
		}
	})
	t.Run("tls-rejected-by-name", func(t *testing.T) {
		if out, err := curlGet("https://blocked.lab/", "blocked.lab", httpsPort); err == nil {
			t.Fatalf("curl https://blocked.lab/ succeeded: %q", out)
		}
		if strings.Contains(upA.out.String()+upB.out.String(), "blocked.lab") {
			t.Error("a rejected name reached an upstream")
		}
	})
	t.Run("quic-initial", func(t *testing.T) {
		// quic.lab -> a: the remote gets the Initials from the proxy host;
		// other names -> NETWORK,udp,DIRECT: from the app's own address;
		// blocked.lab -> REJECT: never.
		for _, tc := range []struct {
			name string
			from netip.Addr // invalid: must not arrive
		}{
			{"quic.lab", lab.ProxyUp4.Addr()},
			{"direct.lab", lab.AppUplink4.Addr()},
			{"blocked.lab", netip.Addr{}},
		} {
			e.quicDial(t, tc.name, netip.AddrPortFrom(remote4, httpsPort))
			from, ok := quicSeen.wait(tc.name, 3*time.Second)
			switch {
			case !tc.from.IsValid() && ok:
				t.Errorf("%s: a rejected QUIC flow reached the remote from %s", tc.name, from)
			case tc.from.IsValid() && !ok:
				t.Errorf("%s: no Initial reached the remote", tc.name)
			case tc.from.IsValid() && from != tc.from:
				t.Errorf("%s: Initials came from %s, want %s", tc.name, from, tc.from)
			}
		}
		if !logged(ts, "sniffed=blocked.lab") || !strings.Contains(ts.out.String(), "outbound=REJECT") {
			t.Error("the rejected QUIC flow is not logged with its sniffed name")
		}
	})
	t.Run("server-first", func(t *testing.T) {
		// Port 22 is dialed at once; port 2222 after sniff-timeout, by
		// address. Either way the server's banner reaches the app.
		for _, port := range []uint16{sshPort, bannerPort} {
			start := time.Now()
			c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, port).String())
			if err != nil {
				t.Fatalf("port %d: %v", port, err)
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			r := bufio.NewReader(c)
			banner, err := r.ReadString('\n')
			if err != nil || banner != sshBanner {
				c.Close()
				t.Fatalf("port %d: banner %q, %v", port, banner, err)
			}
			t.Logf("port %d: banner after %v", port, time.Since(start))
			fmt.Fprintf(c, "SSH-2.0-client\r\n")
			if echo, err := r.ReadString('\n'); err != nil || echo != "SSH-2.0-client\r\n" {
				t.Errorf("port %d: echo %q, %v", port, echo, err)
			}
			c.Close()
		}
		if !logged(upB, fmt.Sprintf("target=%s:%d", remote4, sshPort)) || !logged(upB, fmt.Sprintf("target=%s:%d", remote4, bannerPort)) {
			t.Error("the server-first flows did not reach upstream b by address")
		}
	})
	t.Run("refused-without-sniffing", func(t *testing.T) {
		// The first rule matches port 9 by address before any domain rule:
		// no name is needed, so the upstream is dialed before the app's
		// handshake completes and its refusal is the app's connect error.
		start := time.Now()
		c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, closedPort).String())
		if err == nil {
			c.Close()
			t.Fatal("connected to a port nobody listens on")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial a closed port: %v, want connection refused in the handshake", err)
		}
		t.Logf("refused after %v", time.Since(start))
	})
}

// startSniffServices starts, in the remote host, an HTTPS server on 443, a
// UDP listener on 443 that reads the names of the QUIC Initials it gets,
// and banner-first servers on 22 and 2222.
func (e *env) startSniffServices(seen *sniffedDatagrams) error {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(remote4, httpsPort).String())
	if err != nil {
		return err
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello over tls to %s\n", r.TLS.ServerName)
	}))
	hs.Listener.Close()
	hs.Listener = ln
	hs.StartTLS()
	e.wg.Add(1)
	go func() { defer e.wg.Done(); <-e.ctx.Done(); hs.Close() }()

	for _, port := range []uint16{sshPort, bannerPort} {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(remote4, port).String())
		if err != nil {
			return err
		}
		e.serve(ln, func(c net.Conn) {
			c.Write([]byte(sshBanner))
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				c.Write([]byte(line))
			}
		}, nil)
	}

	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(remote4, httpsPort).String())
	if err != nil {
		return err
	}
	e.wg.Add(2)
	go func() { defer e.wg.Done(); <-e.ctx.Done(); pc.Close() }()
	go func() {
		defer e.wg.Done()
		flows := map[netip.AddrPort]*sniff.QUICSniffer{}
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort()
			q := flows[src]
			if q == nil {
				q = &sniff.QUICSniffer{}
				flows[src] = q
			}
			if host, v := q.Add(buf[:n]); v == sniff.Found {
				seen.add(host, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()).Addr())
			}
		}
	}()
	return nil
}

// sniffedDatagrams records, per QUIC server name, where its Initials came from.
type sniffedDatagrams struct {
	mu   sync.Mutex
	from map[string]netip.Addr
}

func (s *sniffedDatagrams) add(host string, from netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.from == nil {
		s.from = map[string]netip.Addr{}
	}
	s.from[host] = from
}

func (s *sniffedDatagrams) wait(host string, d time.Duration) (netip.Addr, bool) {
	for deadline := time.Now().Add(d); ; {
		s.mu.Lock()
		a, ok := s.from[host]
		s.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return a, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quicDial starts a QUIC handshake from the app host to dst with server
// name name (the remote never answers; its Initials are what count).
func (e *env) quicDial(t *testing.T, name string, dst netip.AddrPort) {
	t.Helper()
	pc, err := e.app.ListenPacket(e.ctx, "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 1500*time.Millisecond)
	defer cancel()
	c, err := quic.Dial(ctx, pc, net.UDPAddrFromAddrPort(dst), &tls.Config{ServerName: name, NextProtos: []string{"h3"}}, nil)
	if err == nil {
		c.CloseWithError(0, "")
	}
	pc.Close()
}
