package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/sniff"
)

// byName decides like a DOMAIN rule for name (to named) in front of a
// MATCH to other, and records the metadata it saw.
func byName(name string, named, other Outbound, seen chan<- rules.Metadata) Decider {
	return func(m *rules.Metadata) Decision {
		if seen != nil {
			seen <- *m
		}
		if m.Host == name {
			if named == nil {
				return Decision{Action: Reject, Rule: "DOMAIN," + name + ",REJECT"}
			}
			return Decision{Action: Proxy, Outbound: named, Rule: "DOMAIN," + name}
		}
		return Decision{Action: Proxy, Outbound: other, Rule: "MATCH"}
	}
}

func sniffAll(timeout time.Duration, override bool) func(*Config) {
	return func(c *Config) {
		c.Sniff = &SniffConfig{Want: func(*rules.Metadata) bool { return true }, Timeout: timeout, OverrideDestination: override}
	}
}

// A TLS flow to a real address: the ClientHello's name picks the rule,
// the upstream is dialed by the name, and the bytes read reach it first.
func TestSniffTLSDialsByName(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	named := &fakeOutbound{name: "named", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	other := &fakeOutbound{name: "other", dial: func(string) (net.Conn, error) { return nil, errors.New("wrong outbound") }}
	seen := make(chan rules.Metadata, 1)
	r, flows := newRouter(t, byName("tls.example", named, other, seen), sniffAll(5*time.Second, true))
	req := newFakeReq("203.0.113.7:443")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(t.Context(), nil, req); close(done) }()

	hello := make(chan error, 1)
	go func() {
		hello <- tls.Client(appRemote, &tls.Config{ServerName: "tls.example", InsecureSkipVerify: true}).Handshake()
	}()
	// The upstream gets the whole ClientHello first.
	got := readUntilVerdict(t, upRemote)
	if host, v := sniff.TLSServerName(got); v != sniff.Found || host != "tls.example" {
		t.Fatalf("the upstream's first bytes: %q, %v", host, v)
	}
	if d := named.addrs(); len(d) != 1 || d[0] != "tls.example:443" {
		t.Fatalf("dialed %v, want tls.example:443", d)
	}
	if m := testenv.Recv(t, seen, "the metadata the rules saw"); m.Host != "tls.example" || !m.RealDst || m.Dst != req.dst {
		t.Fatalf("rules saw %+v; want the name, the real address and RealDst", m)
	}
	upRemote.Close()
	testenv.Recv(t, hello, "the app's TLS handshake's end")
	appRemote.Close()
	testenv.Recv(t, done, "the handler's return")
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.Host != "tls.example" || rec.SniffHost != "tls.example" || rec.Outbound != "named" || rec.Up < int64(len(got)) {
		t.Fatalf("flow record %+v", rec)
	}
	if r.Stats().Sniffed.Load() != 1 {
		t.Fatal("Sniffed not counted")
	}
}

// sniff-override-destination off: the rules see the name, the upstream the
// address. An outbound that resolves locally (DIRECT) always gets the address.
func TestSniffHTTPDialsByAddress(t *testing.T) {
	for _, tc := range []struct {
		name     string
		override bool
		local    bool
	}{{"override off", false, false}, {"direct", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			appLocal, appRemote := testenv.TCPPair(t)
			upLocal, upRemote := testenv.TCPPair(t)
			fo := &fakeOutbound{name: "named", dial: func(string) (net.Conn, error) { return upLocal, nil }}
			var named Outbound = fo
			if tc.local {
				named = localOutbound{fo}
			}
			r, flows := newRouter(t, byName("web.example", named, nil, nil), sniffAll(5*time.Second, tc.override))
			req := newFakeReq("203.0.113.8:8080")
			req.app = appLocal
			done := make(chan struct{})
			go func() { r.handleTCP(t.Context(), nil, req); close(done) }()
			const get = "GET / HTTP/1.1\r\nHost: Web.Example:8080\r\n\r\n"
			appRemote.Write([]byte(get))
			appRemote.CloseWrite()
			if b, _ := io.ReadAll(upRemote); string(b) != get {
				t.Fatalf("upstream got %q", b)
			}
			if d := fo.addrs(); len(d) != 1 || d[0] != "203.0.113.8:8080" {
				t.Fatalf("dialed %v, want the address", d)
			}
			upRemote.Close()
			testenv.Recv(t, done, "the handler's return")
			if rec := testenv.Recv(t, flows, "the flow's record"); rec.SniffHost != "web.example" || rec.Outbound != "named" {
				t.Fatalf("flow record %+v", rec)
			}
		})
	}
}

type localOutbound struct{ *fakeOutbound }

// addrs returns the addresses dialed so far.
func (o *fakeOutbound) addrs() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.dialed...)
}

func (localOutbound) ResolvesLocally() bool { return true }

// A server-speaks-first flow: nothing comes from the app, so after the
// timeout the flow is dialed by its address and the server's banner flows.
func TestSniffServerFirstDialsAfterTimeout(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	r, flows := newRouter(t, Static(out), sniffAll(50*time.Millisecond, true))
	req := newFakeReq("203.0.113.9:2222")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(t.Context(), nil, req); close(done) }()
	upRemote.Write([]byte("SSH-2.0-test\r\n"))
	banner := make([]byte, 14)
	if _, err := io.ReadFull(appRemote, banner); err != nil || string(banner) != "SSH-2.0-test\r\n" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	if d := out.addrs(); len(d) != 1 || d[0] != "203.0.113.9:2222" {
		t.Fatalf("dialed %v", d)
	}
	appRemote.Write([]byte("SSH-2.0-client\r\n"))
	appRemote.CloseWrite()
	if b, _ := io.ReadAll(upRemote); string(b) != "SSH-2.0-client\r\n" {
		t.Fatalf("server got %q", b)
	}
	upRemote.Close()
	testenv.Recv(t, done, "the handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.SniffHost != "" || rec.Err != nil {
		t.Fatalf("flow record %+v", rec)
	}
}

// A flow that needs no name keeps dial-before-accept: a refused upstream
// refuses the app's handshake, it is never accepted.
func TestSniffUnwantedKeepsDialBeforeAccept(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return nil, refused }}
	asked := 0
	r, flows := newRouter(t, Static(out), func(c *Config) {
		c.Sniff = &SniffConfig{Want: func(m *rules.Metadata) bool { asked++; return m.Dst.Port() == 443 }}
	})
	req := newFakeReq("10.0.0.1:22")
	r.handleTCP(t.Context(), nil, req)
	select {
	case <-req.rejected:
	default:
		t.Fatal("the app's handshake was not refused")
	}
	select {
	case <-req.accepted:
		t.Fatal("accepted a flow that needed no name")
	default:
	}
	if rec := testenv.Recv(t, flows, "the flow's record"); !errors.Is(rec.Err, syscall.ECONNREFUSED) || asked != 1 {
		t.Fatalf("flow %+v, Want asked %d times", rec, asked)
	}
	// A fake IP has its name already: Want is not even asked.
	r2, flows2 := newRouter(t, Static(out), func(c *Config) {
		c.Sniff = &SniffConfig{Want: func(*rules.Metadata) bool { asked++; return true }}
		c.ReverseHost = func(netip.Addr) (string, bool) { return "fake.example", true }
	})
	req = newFakeReq("198.18.0.9:443")
	r2.handleTCP(t.Context(), nil, req)
	testenv.Recv(t, req.rejected, "the app's connection reset")
	testenv.Recv(t, flows2, "the flow's record")
	if asked != 1 {
		t.Fatal("Want asked for a fake IP's flow")
	}
}

// A sniffed flow whose upstream refuses, or whose name is rejected, is
// reset right after the sniff (the handshake is already done).
func TestSniffedFlowResetOnRefusalAndReject(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name string
		out  Outbound // for the sniffed name; nil: REJECT
	}{
		{"refused", &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return nil, refused }}},
		{"rejected", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			appLocal, appRemote := testenv.TCPPair(t)
			r, flows := newRouter(t, byName("x.example", tc.out, &fakeOutbound{name: "other"}, nil), sniffAll(5*time.Second, true))
			req := newFakeReq("203.0.113.10:80")
			req.app = appLocal
			done := make(chan struct{})
			go func() { r.handleTCP(t.Context(), nil, req); close(done) }()
			appRemote.Write([]byte("GET / HTTP/1.1\r\nHost: x.example\r\n\r\n"))
			_, err := appRemote.Read(make([]byte, 1))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("app read %v, want a reset", err)
			}
			testenv.Recv(t, done, "the handler's return")
			rec := testenv.Recv(t, flows, "the flow's record")
			if rec.SniffHost != "x.example" || (tc.out != nil) != errors.Is(rec.Err, syscall.ECONNREFUSED) {
				t.Fatalf("flow record %+v", rec)
			}
		})
	}
}

// QUIC: the ClientHello in quic-go's Initials (two datagrams) names the
// flow; the rule for that name carries every datagram, to the address.
func TestSniffQUICRoutesFlowByName(t *testing.T) {
	initials := quicGoInitials(t, "quic.example")
	if len(initials) < 2 {
		t.Fatalf("quic-go sent the ClientHello in %d datagram(s); the test wants it split", len(initials))
	}
	dst := netip.MustParseAddrPort("203.0.113.11:443")
	for _, tc := range []struct {
		name   string
		reject bool
	}{{"proxied", false}, {"rejected", true}} {
		t.Run(tc.name, func(t *testing.T) {
			pc := &fakePC{replies: make(chan dgram, 16), closed: make(chan struct{}), sent: make(chan string, 16)}
			named := &fakeOutbound{name: "named", listen: func() (PacketConn, error) { return pc, nil }}
			other := &fakeOutbound{name: "other", listen: func() (PacketConn, error) { return nil, errors.New("wrong outbound") }}
			var out Outbound = named
			if tc.reject {
				out = nil
			}
			r, flows := newRouter(t, byName("quic.example", out, other, nil), sniffAll(5*time.Second, true))
			f := newFakeFlow()
			for _, d := range initials {
				f.in <- dgram{d, dst}
			}
			done := make(chan struct{})
			go func() { r.handleUDP(t.Context(), nil, f); close(done) }()
			// A rejected flow ends by itself; a proxied one once every
			// datagram is sent and the app closes.
			if !tc.reject {
				for range initials {
					if a := testenv.Recv(t, pc.sent, "a datagram sent upstream"); a != dst.String() {
						t.Fatalf("sent to %s, want the address %s", a, dst)
					}
				}
				f.Close()
			}
			testenv.Recv(t, done, "the handler's return")
			rec := testenv.Recv(t, flows, "the flow's record")
			want := "named"
			if tc.reject {
				want = "REJECT"
			}
			if rec.SniffHost != "quic.example" || rec.Host != "quic.example" || rec.Outbound != want {
				t.Fatalf("flow record %+v", rec)
			}
			if !tc.reject && rec.Up != int64(totalLen(initials)) {
				t.Fatalf("up %d, want %d", rec.Up, totalLen(initials))
			}
		})
	}
}

func totalLen(ds [][]byte) (n int) {
	for _, d := range ds {
		n += len(d)
	}
	return n
}

// quicGoInitials returns the datagrams quic-go's client sends until its
// ClientHello is whole, to a loopback socket that never answers.
func quicGoInitials(t *testing.T, name string) [][]byte {
	t.Helper()
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ctx, cancel := context.WithCancel(t.Context())
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		if c, err := quic.DialAddr(ctx, peer.LocalAddr().String(), &tls.Config{ServerName: name, NextProtos: []string{"h3"}}, nil); err == nil {
			c.CloseWithError(0, "")
		}
	}()
	defer func() { cancel(); <-dialed }()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	var q sniff.QUICSniffer
	var out [][]byte
	buf := make([]byte, 65535)
	for v := sniff.NeedMore; v == sniff.NeedMore; {
		n, _, err := peer.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(buf[:n]))
		_, v = q.Add(out[len(out)-1])
	}
	return out
}

// readUntilVerdict reads c until its bytes get a sniff verdict.
func readUntilVerdict(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b []byte
	buf := make([]byte, 4096)
	for sniff.Stream(b).Verdict == sniff.NeedMore {
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(b), err)
		}
	}
	return b
}

// The bytes read while sniffing are bounded: a request line longer than
// MaxBytes stops the wait, the flow goes by its address, and every byte
// (the ones read and the rest) reaches the upstream in order.
func TestSniffMaxBytes(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	r, flows := newRouter(t, Static(out), func(c *Config) {
		c.Sniff = &SniffConfig{Want: func(*rules.Metadata) bool { return true }, Timeout: 10 * time.Second, MaxBytes: 100, OverrideDestination: true}
	})
	req := newFakeReq("203.0.113.12:80")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(t.Context(), nil, req); close(done) }()
	long := "GET /" + strings.Repeat("a", 300) + " HTTP/1.1\r\nHost: late.example\r\n\r\n"
	appRemote.Write([]byte(long))
	appRemote.CloseWrite()
	if b, _ := io.ReadAll(upRemote); string(b) != long {
		t.Fatalf("upstream got %d bytes, want the %d sent", len(b), len(long))
	}
	if d := out.addrs(); len(d) != 1 || d[0] != "203.0.113.12:80" {
		t.Fatalf("dialed %v, want the address", d)
	}
	upRemote.Close()
	testenv.Recv(t, done, "the handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.SniffHost != "" || rec.Up != int64(len(long)) {
		t.Fatalf("flow record %+v", rec)
	}
}
