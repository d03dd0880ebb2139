package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socksserver"
	"github.com/tunsocks/tunsocks/stun"
	"github.com/tunsocks/tunsocks/stun/stuntest"
)

// world is everything a check needs on loopback: an echo target (IPv4 and,
// when the host has it, IPv6) known as echo.test, a TLS server, a DNS
// server, an RFC 5780 STUN responder on 127.0.0.1 and 127.0.0.2, and a
// closed port.
type world struct {
	echo4, echo6 netip.AddrPort
	tls          netip.AddrPort
	dns          netip.AddrPort
	stun         *stun.Server
	closed       netip.AddrPort
	ca           *x509.CertPool
	hosts        map[string][]netip.Addr
}

const echoName = "echo.test"

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{hosts: map[string][]netip.Addr{}}
	echo := func(c net.Conn) { io.Copy(c, c) }
	w.echo4 = netip.MustParseAddrPort(testenv.TCPServer(t, "tcp", "127.0.0.1:0", echo))
	w.hosts[echoName] = []netip.Addr{w.echo4.Addr()}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		// The same port on ::1, so that echo.test:PORT works for both.
		for try := 0; try < 20 && !w.echo6.IsValid(); try++ {
			if try > 0 {
				w.echo4 = netip.MustParseAddrPort(testenv.TCPServer(t, "tcp", "127.0.0.1:0", echo))
				w.hosts[echoName] = []netip.Addr{w.echo4.Addr()}
			}
			if ln6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", w.echo4.Port())); err == nil {
				ln6.Close()
				w.echo6 = netip.MustParseAddrPort(testenv.TCPServer(t, "tcp", fmt.Sprintf("[::1]:%d", w.echo4.Port()), echo))
				w.hosts[echoName] = append(w.hosts[echoName], w.echo6.Addr())
			}
		}
	}
	ca, cert := testenv.CA(t, echoName)
	w.ca = x509.NewCertPool()
	w.ca.AddCert(ca)
	w.tls = netip.MustParseAddrPort(testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() == nil {
			io.Copy(tc, tc)
		}
	}))
	w.dns = dnsServer(t)
	w.stun = stuntest.Loopback(t)
	w.closed = testenv.ClosedPort(t)
	return w
}

func (w *world) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if a, ok := w.hosts[host]; ok {
		var out []netip.Addr
		for _, ip := range a {
			if network == "ip" || (network == "ip4") == ip.Is4() {
				out = append(out, ip)
			}
		}
		return out, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// serverDialer is the SOCKS server's way out: echo.test resolves in the
// world, and 192.0.2.0/24 is unreachable at once.
type serverDialer struct{ w *world }

func (d serverDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if a, ok := d.w.hosts[host]; ok {
		address = net.JoinHostPort(a[0].String(), port)
	}
	if ap, err := netip.ParseAddrPort(address); err == nil && netip.MustParsePrefix("192.0.2.0/24").Contains(ap.Addr()) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ENETUNREACH}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

func (d serverDialer) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// startSOCKS runs a socksserver with cfg on loopback until the test ends.
func startSOCKS(t *testing.T, w *world, cfg socksserver.Config) string {
	t.Helper()
	cfg.Dialer = serverDialer{w}
	cfg.LookupNetIP = w.lookup
	cfg.FailureCloseDelay = 100 * time.Millisecond
	s, err := socksserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.Serve(t, s)
}

func (w *world) options(proxy string) Options {
	u, err := url.Parse(proxy)
	if err != nil {
		panic(err)
	}
	return Options{
		Proxy:            u,
		Target:           fmt.Sprintf("%s:%d", echoName, w.echo4.Port()),
		TLSTarget:        fmt.Sprintf("%s:%d", echoName, w.tls.Port()),
		RefusedTarget:    w.closed.String(),
		UnroutableTarget: "192.0.2.1:80",
		UDPTarget:        w.dns.String(),
		STUN:             w.stun.Primary().String(),
		Timeout:          5 * time.Second,
		NATWait:          1500 * time.Millisecond,
		LookupNetIP:      w.lookup,
		Roots:            w.ca,
	}
}

// dnsServer answers every A query with 192.0.2.53, on loopback.
func dnsServer(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := dnsAnswer(buf[:n]); out != nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func dnsAnswer(q []byte) []byte {
	var m dnsmessage.Message
	if m.Unpack(q) != nil || len(m.Questions) != 1 {
		return nil
	}
	m.Header.Response = true
	m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
		Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 53}}}}
	out, _ := m.Pack()
	return out
}

// verdicts maps probe IDs to verdicts.
func verdicts(r *Report) map[string]Verdict {
	m := map[string]Verdict{}
	for _, p := range r.Probes {
		m[p.ID] = p.Verdict
	}
	return m
}

func expectVerdicts(t *testing.T, r *Report, want map[string]Verdict) {
	t.Helper()
	got := verdicts(r)
	for id, v := range want {
		if got[id] != v {
			p := r.ProbeByID(id)
			t.Errorf("%s = %q, want %s (%+v)", id, got[id], v, p)
		}
	}
}
