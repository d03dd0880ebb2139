package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socksserver"
)

// dnsQuery builds a query for name and type.
func dnsQuery(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// tcpNameserver is a nameserver speaking DNS over TCP that answers every
// query with one record of its type (A: 192.0.2.80, TXT: "real"), and
// counts the queries.
func tcpNameserver(t *testing.T) (string, *atomic.Int32) {
	var asked atomic.Int32
	addr := testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		asked.Add(1)
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil {
			return
		}
		m.Header.Response = true
		qq := m.Questions[0]
		rh := dnsmessage.ResourceHeader{Name: qq.Name, Type: qq.Type, Class: dnsmessage.ClassINET, TTL: 60}
		switch qq.Type {
		case dnsmessage.TypeA:
			m.Answers = []dnsmessage.Resource{{Header: rh, Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 80}}}}
		case dnsmessage.TypeTXT:
			m.Answers = []dnsmessage.Resource{{Header: rh, Body: &dnsmessage.TXTResource{TXT: []string{"real"}}}}
		}
		resp, _ := m.Pack()
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
	})
	return addr, &asked
}

// countingDialer dials directly and counts.
type countingDialer struct{ n *atomic.Int32 }

func (d countingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

// socksProxy runs our SOCKS server on loopback and counts what it carries.
func socksProxy(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var carried atomic.Int32
	srv, err := socksserver.New(socksserver.Config{Dialer: countingDialer{&carried}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), &carried
}

func wireDNS(t *testing.T, yaml string) *wiring {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "")
	if err != nil {
		t.Fatal(err)
	}
	w, err := wire(cfg, &direct.Dialer{}, discardLogger(), wireOptions{dns: true})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func ask(t *testing.T, w *wiring, name string, typ dnsmessage.Type) *dnsmessage.Message {
	t.Helper()
	resp, err := w.hook.Handle(context.Background(), dnsQuery(t, name, typ))
	var m dnsmessage.Message
	if uerr := m.Unpack(resp); uerr != nil {
		t.Fatalf("%s %v: %v (%v)", name, typ, uerr, err)
	}
	return &m
}

// TestFakeAnswersStayOutOfRealNames: the real-name table learns the
// answers the nameservers gave for DIRECT names, never the fake IPs handed
// out for proxied ones. Before the fix every answer went in, fake ones too
// (seen failing: "the fake answer 198.18.0.3 went into the real-name table
// as www.example.com").
func TestFakeAnswersStayOutOfRealNames(t *testing.T) {
	ns, _ := tcpNameserver(t)
	w := wireDNS(t, fmt.Sprintf("proxies:\n  - name: p\n    url: socks5://127.0.0.1:1\nrules:\n  - DOMAIN-SUFFIX,example.com,p\n  - MATCH,DIRECT\ndns:\n  nameserver: [tcp://%s]\n", ns))
	m := ask(t, w, "www.example.com.", dnsmessage.TypeA)
	if len(m.Answers) != 1 {
		t.Fatalf("answer %v", m)
	}
	fake := netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A)
	if !w.pool.Contains(fake) {
		t.Fatalf("a proxied name got %s, not a fake IP", fake)
	}
	if name, ok := w.policy.RealHost(fake); ok {
		t.Fatalf("the fake answer %s went into the real-name table as %q", fake, name)
	}
	ask(t, w, "direct.test.", dnsmessage.TypeA)
	if name, ok := w.policy.RealHost(netip.MustParseAddr("192.0.2.80")); !ok || name != "direct.test" {
		t.Fatalf("the real answer for a DIRECT name: RealHost = %q, %v", name, ok)
	}
}

// TestTXTForProxiedNameGoesThroughItsProxy: a TXT query for a name whose
// rule picks a proxy is asked of the nameserver over TCP through that
// proxy, although the nameserver's own address routes DIRECT. Before the
// fix it got SERVFAIL (seen failing: "no proxy resolver configured for
// TypeTXT www.example.com").
func TestTXTForProxiedNameGoesThroughItsProxy(t *testing.T) {
	ns, asked := tcpNameserver(t)
	proxy, carried := socksProxy(t)
	w := wireDNS(t, fmt.Sprintf("proxies:\n  - name: p\n    url: socks5://%s\nrules:\n  - DOMAIN-SUFFIX,example.com,p\n  - DOMAIN-SUFFIX,blocked.test,REJECT\n  - MATCH,DIRECT\ndns:\n  nameserver: [%s]\n", proxy, ns))
	m := ask(t, w, "www.example.com.", dnsmessage.TypeTXT)
	if m.Header.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("TXT for a proxied name: %v, %d answers", m.Header.RCode, len(m.Answers))
	}
	if carried.Load() != 1 || asked.Load() != 1 {
		t.Fatalf("proxy carried %d connections, nameserver asked %d times; want 1 and 1", carried.Load(), asked.Load())
	}
	if m := ask(t, w, "x.blocked.test.", dnsmessage.TypeTXT); m.Header.RCode != dnsmessage.RCodeServerFailure || asked.Load() != 1 {
		t.Errorf("TXT for a rejected name: %v, nameserver asked %d times; want SERVFAIL and no query", m.Header.RCode, asked.Load())
	}
}
