package httpconnect

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
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
	"golang.org/x/net/nettest"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// proxy is an in-test CONNECT proxy on loopback. handle answers one
// request; by default it tunnels to the requested target.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	handle func(c net.Conn, br *bufio.Reader, req *http.Request)
	reqs   chan *http.Request
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t *testing.T, handle func(c net.Conn, br *bufio.Reader, req *http.Request)) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, handle: handle, reqs: make(chan *http.Request, 16)}
	if p.handle == nil {
		p.handle = p.tunnel("HTTP/1.1 200 Connection established\r\n\r\n")
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				p.reqs <- req
				p.handle(c, br, req)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url(userinfo string) *url.URL {
	u := &url.URL{Scheme: "http", Host: p.ln.Addr().String()}
	if userinfo != "" {
		user, pass, _ := strings.Cut(userinfo, ":")
		u.User = url.UserPassword(user, pass)
	}
	return u
}

func (p *proxy) client(t *testing.T, userinfo string) *Client {
	t.Helper()
	c, err := New(p.url(userinfo), &net.Dialer{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// answer replies with a fixed response and keeps the connection open until
// the client closes it.
func answer(resp string) func(c net.Conn, br *bufio.Reader, req *http.Request) {
	return func(c net.Conn, br *bufio.Reader, req *http.Request) {
		io.WriteString(c, resp)
		io.Copy(io.Discard, br)
	}
}

// tunnel replies with resp, then relays to the requested target,
// propagating half-closes both ways.
func (p *proxy) tunnel(resp string) func(c net.Conn, br *bufio.Reader, req *http.Request) {
	return func(c net.Conn, br *bufio.Reader, req *http.Request) {
		up, err := net.Dial("tcp", req.RequestURI)
		if err != nil {
			io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			return
		}
		defer up.Close()
		io.WriteString(c, resp)
		done := make(chan struct{})
		go func() {
			io.Copy(up, br)
			up.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, up)
		c.(*net.TCPConn).CloseWrite()
		<-done
	}
}

// target starts a loopback server running serve on each connection.
func target(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	return testenv.TCPServer(t, "tcp", "127.0.0.1:0", serve)
}

func echo(c net.Conn) { io.Copy(c, c) }

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		url, server, err string
	}{
		{"http://proxy.example", "proxy.example:8080", ""},
		{"http://proxy.example:3128", "proxy.example:3128", ""},
		{"http://u:p@[::1]:8888/", "[::1]:8888", ""},
		{"HTTP://10.0.0.1", "10.0.0.1:8080", ""},
		{"https://proxy.example", "", "https:// (TLS to the proxy) is not supported yet"},
		{"socks5://proxy.example", "", `scheme "socks5" is not supported`},
		{"proxy.example:8080", "", "not supported"},
		{"//proxy.example", "", "has no scheme"},
		{"http://", "", "names no host"},
		{"http://h:0", "", `port "0" is not a number from 1 to 65535`},
		{"http://h:99999", "", `port "99999"`},
		{"http://h/x", "", "only http://[user:pass@]host:port"},
		{"http://h?a=b", "", "only http://[user:pass@]host:port"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(u, nil)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("New(%q) = %v, want error containing %q", tt.url, err, tt.err)
			}
			continue
		}
		if err != nil || c.Server() != tt.server {
			t.Errorf("New(%q) = %v, %v; want server %s", tt.url, c, err, tt.server)
		}
	}
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil): no error")
	}
	if _, err := New(&url.URL{Scheme: "http", Host: "h", User: url.UserPassword("a:b", "c")}, nil); err == nil {
		t.Error("user with a colon: no error")
	}
}

func TestConnect(t *testing.T) {
	dst := target(t, echo)
	p := newProxy(t, nil)
	conn, err := p.client(t, "").DialContext(context.Background(), "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := testenv.Recv(t, p.reqs, "the proxy's request")
	if req.Method != "CONNECT" || req.RequestURI != dst || req.Host != dst || req.Proto != "HTTP/1.1" {
		t.Fatalf("request %s %s %s Host %s", req.Method, req.RequestURI, req.Proto, req.Host)
	}
	if h := req.Header.Get("Proxy-Authorization"); h != "" {
		t.Fatalf("Proxy-Authorization %q sent without credentials", h)
	}
	roundTrip(t, conn, "hello through the tunnel")
	// Nothing was buffered: the conn is the TCP conn itself, so the relay
	// can splice.
	if _, ok := conn.(*net.TCPConn); !ok {
		t.Fatalf("conn is %T, want *net.TCPConn", conn)
	}
}

func TestTargetSentAsGiven(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"example.test:443", "example.test:443"},
		{"[2001:db8::1]:443", "[2001:db8::1]:443"},
		{"192.0.2.1:80", "192.0.2.1:80"},
	} {
		p := newProxy(t, answer("HTTP/1.0 200 OK\r\n\r\n"))
		conn, err := p.client(t, "").DialContext(context.Background(), "tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if req := testenv.Recv(t, p.reqs, "the proxy's request"); req.RequestURI != tt.want || req.Host != tt.want {
			t.Errorf("dial %s: request target %q, Host %q; want %q", tt.addr, req.RequestURI, req.Host, tt.want)
		}
	}
}

func TestAuth(t *testing.T) {
	dst := target(t, echo)
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	var p *proxy
	p = newProxy(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		if req.Header.Get("Proxy-Authorization") != want {
			io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
			return
		}
		p.tunnel("HTTP/1.1 200 OK\r\n\r\n")(c, br, req)
	})

	conn, err := p.client(t, "alice:s3cret").DialContext(context.Background(), "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "authenticated")
	conn.Close()
	testenv.Recv(t, p.reqs, "the proxy's request")

	for _, tt := range []struct{ user, msg string }{
		{"alice:wrong", "authentication failed"},
		{"", "authentication required; put the credentials in the URL"},
	} {
		_, err := p.client(t, tt.user).DialContext(context.Background(), "tcp", dst)
		testenv.Recv(t, p.reqs, "the proxy's request")
		var se *StatusError
		var oe *net.OpError
		switch {
		case err == nil:
			t.Fatalf("%q: no error", tt.user)
		case !errors.As(err, &oe) || oe.Op != "proxyconnect" || oe.Addr.String() != dst:
			t.Errorf("%q: error %v is not a proxyconnect OpError for %s", tt.user, err, dst)
		case !errors.As(err, &se) || se.Code != 407 || !errors.Is(err, ErrAuth):
			t.Errorf("%q: error %v: want a 407 StatusError wrapping ErrAuth", tt.user, err)
		case !strings.Contains(err.Error(), tt.msg):
			t.Errorf("%q: error %v: want it to say %q", tt.user, err, tt.msg)
		case strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "s3cret"):
			t.Errorf("%q: error leaks the password: %v", tt.user, err)
		}
	}

	// A proxy that wants another scheme says so.
	p2 := newProxy(t, answer("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM\r\n\r\n"))
	_, err = p2.client(t, "a:b").DialContext(context.Background(), "tcp", dst)
	if err == nil || !strings.Contains(err.Error(), "wants NTLM, only Basic is supported") {
		t.Fatalf("NTLM proxy: %v", err)
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		resp    string
		reply   socks.Reply
		is      error
		timeout bool
		msg     string
	}{
		{"HTTP/1.1 403 Forbidden\r\n\r\n", socks.NotAllowed, socks.ErrNotAllowed, false, "does not allow this destination"},
		{"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\nerror", socks.HostUnreachable, syscall.EHOSTUNREACH, false, "could not reach the target"},
		{"HTTP/1.1 503 Service Unavailable\r\n\r\n", socks.HostUnreachable, syscall.EHOSTUNREACH, false, "could not reach the target"},
		{"HTTP/1.1 504 Gateway Timeout\r\n\r\n", socks.HostUnreachable, syscall.ETIMEDOUT, true, "timed out"},
		{"HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n", socks.ConnectionRefused, syscall.ECONNREFUSED, false, "refused"},
		{"HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_CONNECT_FAIL 101\r\n\r\n", socks.NetworkUnreachable, syscall.ENETUNREACH, false, "no route"},
		{"HTTP/1.1 405 Method Not Allowed\r\n\r\n", socks.GeneralFailure, nil, false, "does not support CONNECT"},
		{"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", socks.GeneralFailure, nil, false, "refused CONNECT"},
		{"HTTP/1.1 100 Continue\r\n\r\n", socks.GeneralFailure, nil, false, "refused CONNECT"},
		{"SSH-2.0-OpenSSH_9.6\r\n\r\n", socks.GeneralFailure, nil, false, "not an HTTP response"},
		{"HTTP/1.1 2000 OK\r\n\r\n", socks.GeneralFailure, nil, false, "not an HTTP response"},
		{"HTTP/1.1 403 Forbidden\r\nbad header line\r\n\r\n", socks.GeneralFailure, nil, false, "bad header"},
	}
	for _, tt := range tests {
		p := newProxy(t, answer(tt.resp))
		conn, err := p.client(t, "").DialContext(context.Background(), "tcp", "example.test:443")
		testenv.Recv(t, p.reqs, "the proxy's request")
		if err == nil {
			conn.Close()
			t.Errorf("%q: no error", tt.resp)
			continue
		}
		if got := socks.ReplyForError(err); got != tt.reply {
			t.Errorf("%q: ReplyForError = %v, want %v (error %v)", tt.resp, got, tt.reply, err)
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%q: error %v does not wrap %v", tt.resp, err, tt.is)
		}
		var ne net.Error
		if !errors.As(err, &ne) || ne.Timeout() != tt.timeout {
			t.Errorf("%q: Timeout() = %v, want %v", tt.resp, ne != nil && ne.Timeout(), tt.timeout)
		}
		if !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "proxyconnect tcp example.test:443: ") {
			t.Errorf("%q: error %q: want it to start with the op and say %q", tt.resp, err, tt.msg)
		}
	}
}

func TestAnyTwoHundred(t *testing.T) {
	for _, resp := range []string{"HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 204 No Content\r\nVia: x\r\n\r\n", "HTTP/1.1 299 Whatever\n\n"} {
		p := newProxy(t, answer(resp))
		conn, err := p.client(t, "").DialContext(context.Background(), "tcp", "a.test:1")
		testenv.Recv(t, p.reqs, "the proxy's request")
		if err != nil {
			t.Errorf("%q: %v", resp, err)
			continue
		}
		conn.Close()
	}
}

func TestEarlyBytes(t *testing.T) {
	dst := target(t, func(c net.Conn) {
		// Read until the client half-closes, then say how much arrived.
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
	})
	var p *proxy
	p = newProxy(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		// The header and the first bytes of the stream in one write.
		p.tunnel("HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nearly:")(c, br, req)
	})
	conn, err := p.client(t, "").DialContext(context.Background(), "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("conn %T lost CloseWrite", conn)
	}
	if _, err := io.WriteString(conn, "12345"); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "early:got 5" {
		t.Fatalf("read %q, %v; want %q", got, err, "early:got 5")
	}
}

func TestHalfClose(t *testing.T) {
	dst := target(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
	})
	p := newProxy(t, nil)
	conn, err := p.client(t, "").DialContext(context.Background(), "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := strings.Repeat("x", 100000)
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "got 100000" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestOversizeHeader(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", MaxHeader) + "\r\n\r\n"
	p := newProxy(t, answer(big))
	_, err := p.client(t, "").DialContext(context.Background(), "tcp", "a.test:1")
	testenv.Recv(t, p.reqs, "the proxy's request")
	if err == nil || !strings.Contains(err.Error(), "longer than 16384 bytes") {
		t.Fatalf("oversize header: %v", err)
	}
	// Just under the limit is fine.
	ok := "HTTP/1.1 200 OK\r\nX-Big: "
	ok += strings.Repeat("a", MaxHeader-len(ok)-4) + "\r\n\r\n"
	p = newProxy(t, answer(ok))
	conn, err := p.client(t, "").DialContext(context.Background(), "tcp", "a.test:1")
	testenv.Recv(t, p.reqs, "the proxy's request")
	if err != nil {
		t.Fatalf("header of exactly %d bytes: %v", len(ok), err)
	}
	conn.Close()
}

func TestProxyHangsUp(t *testing.T) {
	for _, resp := range []string{"", "HTTP/1.1 200 OK\r\n"} {
		p := newProxy(t, func(c net.Conn, br *bufio.Reader, req *http.Request) { io.WriteString(c, resp) })
		_, err := p.client(t, "").DialContext(context.Background(), "tcp", "a.test:1")
		testenv.Recv(t, p.reqs, "the proxy's request")
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("proxy sends %q and closes: %v, want ErrUnexpectedEOF", resp, err)
		}
	}
}

func TestCancel(t *testing.T) {
	closed := make(chan struct{})
	p := newProxy(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		// Never answer; see the client go away.
		io.Copy(io.Discard, br)
		close(closed)
	})
	before := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.client(t, "").DialContext(ctx, "tcp", "a.test:1")
		errc <- err
	}()
	testenv.Recv(t, p.reqs, "the proxy's request") // the request arrived: the client waits for the answer
	cancel()
	err := testenv.Recv(t, errc, "the dial's end")
	var oe *net.OpError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &oe) || oe.Op != "proxyconnect" {
		t.Fatalf("cancelled dial: %v", err)
	}
	testenv.Recv(t, closed, "the client's close of its proxy connection") // the client closed its connection to the proxy
	goleak.VerifyNone(t, before)
}

func TestDeadline(t *testing.T) {
	p := newProxy(t, answer(""))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := p.client(t, "").DialContext(ctx, "tcp", "a.test:1")
	testenv.Recv(t, p.reqs, "the proxy's request")
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial past the deadline: %v", err)
	}
	if socks.ReplyForError(err) != socks.HostUnreachable {
		t.Fatalf("ReplyForError = %v", socks.ReplyForError(err))
	}
	// An already cancelled context dials nothing.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	c := &Client{server: "192.0.2.1:1", forward: failDialer{t}}
	if _, err := c.DialContext(ctx, "tcp", "a.test:1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a cancelled context: %v", err)
	}
}

// The deadline of the handshake does not stay on the returned conn.
func TestDeadlineCleared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	dst := target(t, func(c net.Conn) {
		<-ctx.Done()
		io.WriteString(c, "late")
	})
	p := newProxy(t, nil)
	conn, err := p.client(t, "").DialContext(ctx, "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	<-ctx.Done() // the target answers only after the dial's deadline passed
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "late" {
		t.Fatalf("read after the dial's deadline: %q, %v", buf, err)
	}
}

type failDialer struct{ t *testing.T }

func (d failDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	d.t.Error("dialed the proxy for a request that should fail first")
	return nil, errors.New("no")
}

func TestBadTarget(t *testing.T) {
	c := &Client{server: "192.0.2.1:1", forward: failDialer{t}}
	for _, tt := range []struct{ network, addr, msg string }{
		{"udp", "a.test:53", `network "udp" is not supported`},
		{"tcp4", "a.test:53", `network "tcp4" is not supported`},
		{"tcp", "a.test", "want host:port"},
		{"tcp", ":80", "with a host"},
		{"tcp", "a.test:0", `port "0"`},
		{"tcp", "a.test:http", `port "http"`},
		{"tcp", "a b:80", "invalid character"},
		{"tcp", "a\r\n\r\nGET / HTTP/1.1\r\nHost x:80", "invalid character"},
		{"tcp", "a/b:80", "invalid character"},
		{"tcp", "u@a:80", "invalid character"},
	} {
		_, err := c.DialContext(context.Background(), tt.network, tt.addr)
		var oe *net.OpError
		if err == nil || !strings.Contains(err.Error(), tt.msg) || !errors.As(err, &oe) || oe.Op != "proxyconnect" {
			t.Errorf("DialContext(%s, %q) = %v, want a proxyconnect error saying %q", tt.network, tt.addr, err, tt.msg)
		}
	}
}

func TestProxyUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := New(&url.URL{Scheme: "http", Host: addr}, &net.Dialer{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DialContext(context.Background(), "tcp", "a.test:1")
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "dial proxy "+addr) {
		t.Fatalf("dial to a closed port: %v", err)
	}
}

// The conn that yields early bytes is a conforming net.Conn.
func TestBufConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ln, err := nettest.NewLocalListener("tcp")
		if err != nil {
			return nil, nil, nil, err
		}
		defer ln.Close()
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() { c, err := ln.Accept(); ch <- res{c, err} }()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		r := <-ch
		if r.err != nil {
			a.Close()
			return nil, nil, nil, r.err
		}
		w := &bufConnCW{&bufConn{Conn: a}}
		return w, r.c, func() { w.Close(); r.c.Close() }, nil
	})
}

func TestBufConnRead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := wrap(a, []byte("abc"))
	if _, ok := c.(interface{ CloseWrite() error }); ok {
		t.Fatal("net.Pipe has no CloseWrite, the wrapper should not claim one")
	}
	go io.WriteString(b, "def")
	buf := make([]byte, 2)
	var got []byte
	for len(got) < 6 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "abcdef" {
		t.Fatalf("read %q", got)
	}
	if wrap(a, nil) != a {
		t.Fatal("wrap without early bytes should return the conn itself")
	}
}

func TestHeaderEnd(t *testing.T) {
	for _, tt := range []struct {
		in   string
		from int
		want int
	}{
		{"HTTP/1.1 200 OK\r\n\r\n", 0, 19},
		{"HTTP/1.1 200 OK\n\nxyz", 0, 17},
		{"HTTP/1.1 200 OK\r\n", 0, -1},
		{"a\r\n\r", 0, -1},
		{"a\r\n\r\n", 1, 5},
	} {
		if got := headerEnd([]byte(tt.in), tt.from); got != tt.want {
			t.Errorf("headerEnd(%q, %d) = %d, want %d", tt.in, tt.from, got, tt.want)
		}
	}
}

// A header trickling in one byte at a time is read whole.
func TestSlowHeader(t *testing.T) {
	p := newProxy(t, func(c net.Conn, br *bufio.Reader, req *http.Request) {
		for _, b := range []byte("HTTP/1.1 200 OK\r\nA: b\r\n\r\nZ") {
			c.Write([]byte{b})
		}
		io.Copy(io.Discard, br)
	})
	conn, err := p.client(t, "").DialContext(context.Background(), "tcp", "a.test:1")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 1)
	if _, err := io.ReadFull(conn, buf); err != nil || buf[0] != 'Z' {
		t.Fatalf("read %q, %v", buf, err)
	}
}

func BenchmarkDial(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				io.Copy(io.Discard, br)
			}()
		}
	}()
	c, err := New(&url.URL{Scheme: "http", Host: ln.Addr().String()}, &net.Dialer{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		conn, err := c.DialContext(context.Background(), "tcp", "example.test:443")
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}

// Whatever a proxy answers, reading it never panics and either succeeds
// with a 2xx or fails. readHeader splits what it read into the header and
// the tunnel's first bytes (rest); what it did not read stays in the
// reader, for the tunnel: together they are the input, in order.
func FuzzResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\nearly"))
	f.Add([]byte("HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 503 x\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n"))
	f.Add([]byte("\n\n"))
	// The header ends inside the first read, the tunnel's data goes on past
	// it: the reader rightly leaves that part unread.
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\n" + strings.Repeat("t", 2000)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &Client{server: "proxy.test:8080"}
		r := strings.NewReader(string(data))
		head, rest, err := readHeader(r)
		if err != nil {
			return
		}
		unread := r.Len()
		if len(head)+len(rest)+unread != len(data) || len(head) > MaxHeader ||
			!bytes.Equal(head, data[:len(head)]) || !bytes.Equal(rest, data[len(head):len(head)+len(rest)]) {
			t.Fatalf("head %d + rest %d + unread %d bytes do not make up the %d read", len(head), len(rest), unread, len(data))
		}
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("head %q does not end with an empty line", head)
		}
		if err := c.checkResponse(head); err == nil && !strings.HasPrefix(string(head), "HTTP/1.") {
			t.Fatalf("accepted %q", head)
		}
	})
}
