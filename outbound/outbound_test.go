package outbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
	"github.com/tunsocks/tunsocks/socksserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// socksServer runs our SOCKS server on loopback, counting the connections
// it carries, and returns its address.
func socksServer(t *testing.T) (addr string, carried *counter) {
	t.Helper()
	carried = &counter{}
	srv, err := socksserver.New(socksserver.Config{Dialer: carried})
	if err != nil {
		t.Fatal(err)
	}
	return testenv.Serve(t, srv), carried
}

// counter is a direct dialer that records what it dials.
type counter struct {
	mu     sync.Mutex
	dialed []string
}

func (c *counter) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c.mu.Lock()
	c.dialed = append(c.dialed, address)
	c.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (c *counter) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.dialed...)
}

// httpProxy is a minimal HTTP CONNECT proxy on loopback that records the
// targets it was asked for.
func httpProxy(t *testing.T) (addr string, asked *counter) {
	t.Helper()
	asked = &counter{}
	addr = testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect {
			return
		}
		up, err := asked.DialContext(context.Background(), "tcp", req.Host)
		if err != nil {
			io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		relay.Stream(context.Background(), c, up, relay.StreamOptions{})
	})
	return addr, asked
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("echo %q, %v; want %q", b, err, msg)
	}
}

// TestChainHops: every mix of SOCKS and HTTP hops carries TCP through each
// hop in order; UDP works through a lone SOCKS5 hop and is refused, with
// router.ErrUDPUnsupported, through a chain or an HTTP proxy.
func TestChainHops(t *testing.T) {
	echo := testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	s1, carried1 := socksServer(t)
	s2, carried2 := socksServer(t)
	h1, asked1 := httpProxy(t)
	for _, tc := range []struct {
		name  string
		hops  []string
		kind  string // the outbound's type
		udp   bool
		first *counter // the hop that dials the echo server
		via   []*counter
	}{
		{"socks", []string{"socks5://" + s1}, "*outbound.Socks", true, carried1, nil},
		{"http", []string{"http://" + h1}, "*outbound.HTTP", false, asked1, nil},
		{"socks-socks", []string{"socks5://" + s1, "socks5://" + s2}, "*outbound.Socks", false, carried2, []*counter{carried1}},
		{"http-socks", []string{"http://" + h1, "socks5://" + s1}, "*outbound.Socks", false, carried1, []*counter{asked1}},
		{"socks-http", []string{"socks5://" + s1, "http://" + h1}, "*outbound.HTTP", false, asked1, []*counter{carried1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hops []*url.URL
			for _, h := range tc.hops {
				hops = append(hops, mustURL(t, h))
			}
			out, err := Chain("p", &direct.Dialer{}, hops...)
			if err != nil {
				t.Fatal(err)
			}
			if got := typeName(out); got != tc.kind || out.Name() != "p" {
				t.Fatalf("outbound %s named %q, want %s named p", got, out.Name(), tc.kind)
			}
			before := len(tc.first.all())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := out.DialContext(ctx, "tcp", echo)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, c, "through "+tc.name)
			if got := tc.first.all(); len(got) != before+1 || got[len(got)-1] != echo {
				t.Errorf("the last hop dialed %v, want the echo server %s", got, echo)
			}
			for _, v := range tc.via {
				if len(v.all()) == 0 {
					t.Errorf("an earlier hop carried nothing")
				}
			}
			pc, err := out.ListenPacket(ctx)
			if tc.udp {
				if err != nil {
					t.Fatalf("UDP through a lone SOCKS5 hop: %v", err)
				}
				pc.Close()
			} else if !errors.Is(err, router.ErrUDPUnsupported) {
				t.Errorf("UDP through %s: %v, want router.ErrUDPUnsupported", tc.name, err)
			}
		})
	}
	if _, err := Chain("p", &direct.Dialer{}); err == nil {
		t.Error("a chain of no hops was built")
	}
	if _, err := Chain("p", &direct.Dialer{}, mustURL(t, "socks5://"+s1), mustURL(t, "socks4://u:pw@h")); err == nil || !strings.Contains(err.Error(), `proxy "p": hop 2: socksclient: proxy socks4 has no passwords`) {
		t.Errorf("a bad second hop: %v", err)
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *Socks:
		return "*outbound.Socks"
	case *HTTP:
		return "*outbound.HTTP"
	case *Direct:
		return "*outbound.Direct"
	}
	return "?"
}

// namedRelay is a SOCKS5 server for UDP ASSOCIATE whose relay answers every
// datagram with "re:"+payload from the source from(dst) names in the reply
// header (a domain, or an address).
func namedRelay(t *testing.T, from func(dst socks.Addr) socks.Addr) string {
	t.Helper()
	relayPC, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65535)
		for {
			n, client, err := relayPC.ReadFromUDP(b)
			if err != nil {
				return
			}
			_, dst, payload, err := socks.ParseUDP(b[:n])
			if err != nil {
				continue
			}
			out, _ := socks.AppendUDPHeader(nil, 0, from(dst))
			relayPC.WriteToUDP(append(append(out, "re:"...), payload...), client)
		}
	}()
	t.Cleanup(func() { relayPC.Close(); <-done })
	return testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		if _, err := socks.ReadGreeting(c); err != nil {
			return
		}
		c.Write([]byte{socks.Version5, byte(socks.MethodNoAuth)})
		if _, err := socks.ReadRequest(c); err != nil {
			return
		}
		b, _ := socks.AppendReply(nil, socks.Succeeded, socks.AddrFromAddrPort(relayPC.LocalAddr().(*net.UDPAddr).AddrPort()))
		c.Write(b)
		io.Copy(io.Discard, c) // the association lives as long as this connection
	})
}

// TestSocksUDPReplyFromName: a reply whose SOCKS header names its source by
// domain reaches the router with that name, instead of being dropped; a
// datagram to a name leaves as the name.
func TestSocksUDPReplyFromName(t *testing.T) {
	srv := namedRelay(t, func(dst socks.Addr) socks.Addr { return dst }) // the name the datagram went to
	out, err := Chain("proxy", &direct.Dialer{}, mustURL(t, "socks5://"+srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := out.ListenPacket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := pc.Send([]byte("q"), socks.Addr{Name: "example.com", Port: 53}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	n, from, err := pc.Recv(b)
	if err != nil || string(b[:n]) != "re:q" || from != (socks.Addr{Name: "example.com", Port: 53}) {
		t.Fatalf("Recv = %q from %v, %v; want re:q from example.com:53", b[:n], from, err)
	}
}

// TestDirectUDP: DIRECT sends to an address as it is and to a name after
// resolving it (cached for the session), reports replies from their
// senders, and looks names up under the flow's context, so a flow that
// ends does not leave a lookup blocking its pump.
func TestDirectUDP(t *testing.T) {
	echo := testenv.UDPEcho(t)
	echoAP := echo.LocalAddr().(*net.UDPAddr).AddrPort()
	dials := make(chan struct{}, 16)
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		dials <- struct{}{}
		<-ctx.Done() // a nameserver that never answers
		return nil, ctx.Err()
	}}
	d := &Direct{Dialer: &direct.Dialer{}, Resolver: res}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pc, err := d.ListenPacket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := pc.Send([]byte("by address"), socks.AddrFromAddrPort(echoAP)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	n, from, err := pc.Recv(b)
	if err != nil || string(b[:n]) != "by address" || from != socks.AddrFromAddrPort(echoAP) {
		t.Fatalf("Recv = %q from %v, %v", b[:n], from, err)
	}
	// A name the session has resolved is sent to without a lookup.
	pc.(*directPacket).names.Put("echo.test", echoAP.Addr(), time.Now().Add(time.Minute))
	if err := pc.Send([]byte("by name"), socks.Addr{Name: "echo.test", Port: echoAP.Port()}); err != nil {
		t.Fatal(err)
	}
	n, from, err = pc.Recv(b)
	if err != nil || string(b[:n]) != "by name" || from != socks.AddrFromAddrPort(echoAP) {
		t.Fatalf("Recv = %q from %v, %v", b[:n], from, err)
	}
	// An unknown name is looked up; ending the flow ends the lookup.
	sent := make(chan error, 1)
	go func() { sent <- pc.Send([]byte("x"), socks.Addr{Name: "slow.test", Port: 9}) }()
	testenv.Recv(t, dials, "the lookup's dial")
	cancel()
	select {
	case err := <-sent:
		if err == nil {
			t.Fatal("a datagram to a name that was never resolved was sent")
		}
	case <-time.After(resolveLimit / 2):
		t.Fatal("the lookup outlived the flow's context")
	}
}

func TestDialReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("dial: %w", socksclient.ErrAuthFailed), "auth"},
		{&httpconnect.StatusError{Code: 407, Err: httpconnect.ErrAuth}, "auth"},
		{&socks.ReplyError{Version: socks.Version5, Code: socks.ConnectionRefused}, "refused"},
		{&socks.ReplyError{Version: socks.Version5, Code: socks.NotAllowed}, "refused"},
		{&socks.ReplyError{Version: socks.Version5, Code: socks.HostUnreachable}, "unreachable"},
		{&socks.ReplyError{Version: socks.Version5, Code: socks.TTLExpired}, "timeout"},
		{&socks.ReplyError{Version: socks.Version5, Code: socks.GeneralFailure}, "proto"},
		{fmt.Errorf("x: %w", socks.ErrVersion), "proto"},
		{&httpconnect.StatusError{Code: 400}, "proto"},
		{&httpconnect.StatusError{Code: 504, Err: syscall.ETIMEDOUT}, ""},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, ""},
	} {
		if got := DialReason(tc.err); got != tc.want {
			t.Errorf("DialReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A DIRECT UDP session waits for a reply without reading it, so the router
// takes a buffer only once one is there; the reply is still read after.
func TestDirectUDPWaitRead(t *testing.T) {
	echo := testenv.UDPEcho(t)
	d := &Direct{Dialer: &direct.Dialer{}}
	pc, err := d.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, ok := pc.(interface{ WaitRead() error })
	if !ok {
		t.Fatal("DIRECT UDP session has no WaitRead")
	}
	waited := make(chan error, 1)
	go func() { waited <- w.WaitRead() }()
	select {
	case err := <-waited:
		t.Fatalf("WaitRead returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	to := socks.AddrFromAddrPort(echo.LocalAddr().(*net.UDPAddr).AddrPort())
	if err := pc.Send([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Recv(t, waited, "WaitRead's return"); err != nil {
		t.Fatalf("WaitRead: %v", err)
	}
	if err := w.WaitRead(); err != nil { // not taken: at once again
		t.Fatalf("second WaitRead: %v", err)
	}
	b := make([]byte, 16)
	if n, _, err := pc.Recv(b); err != nil || string(b[:n]) != "ping" {
		t.Fatalf("Recv after WaitRead = %q, %v", b[:n], err)
	}
	go func() { waited <- w.WaitRead() }()
	time.Sleep(20 * time.Millisecond)
	pc.Close()
	if err := testenv.Recv(t, waited, "WaitRead's return"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WaitRead after Close: %v, want net.ErrClosed", err)
	}
}
