package socksclient

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newFake returns a forward Dialer whose every connection goes to a
// scripted fake server over net.Pipe. The script runs on the server end.
func newFake(t *testing.T, script func(t *testing.T, c net.Conn)) *testenv.Dialer {
	return testenv.NewDialer(t, func(c net.Conn) { script(t, c) })
}

// expect reads len(want) bytes and checks them.
func expect(t *testing.T, c net.Conn, what string, want []byte) bool {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Errorf("fake server: reading %s: %v", what, err)
		return false
	}
	if !bytes.Equal(got, want) {
		t.Errorf("fake server: %s = % x, want % x", what, got, want)
		return false
	}
	return true
}

func send(t *testing.T, c net.Conn, b ...byte) bool {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Errorf("fake server: write: %v", err)
		return false
	}
	return true
}

// serve5 runs a no-auth SOCKS5 exchange: it checks the greeting, reads the
// request with socks.ReadRequest and answers rep with bound.
func serve5(t *testing.T, c net.Conn, rep socks.Reply, bound socks.Addr) (socks.Request, bool) {
	t.Helper()
	if !expect(t, c, "greeting", []byte{5, 1, 0}) || !send(t, c, 5, 0) {
		return socks.Request{}, false
	}
	req, err := socks.ReadRequest(c)
	if err != nil {
		t.Errorf("fake server: request: %v", err)
		return req, false
	}
	b, _ := socks.AppendReply(nil, rep, bound)
	return req, send(t, c, b...)
}

// echo copies what it reads back until EOF.
func echo(c net.Conn) { io.Copy(c, c) }

func TestConnectDomainIsSentAsDomain(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		name := "nonexistent.invalid"
		want := append([]byte{5, 1, 0, socks.AtypDomain, byte(len(name))}, name...)
		want = append(want, 0, 80)
		if !expect(t, c, "greeting", []byte{5, 1, 0}) || !send(t, c, 5, 0) ||
			!expect(t, c, "request", want) ||
			!send(t, c, 5, 0, 0, 1, 10, 0, 0, 1, 0x12, 0x34) {
			return
		}
		echo(c)
	})
	for _, scheme := range []string{"socks5", "socks5h"} {
		c, err := Parse(scheme+"://proxy.example:1080", d)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := c.DialContext(context.Background(), "tcp", "nonexistent.invalid:80")
		if err != nil {
			t.Fatalf("%s: %v", scheme, err)
		}
		roundTrip(t, conn, "hello through the proxy")
		conn.Close()
	}
	if got := d.Dials(); len(got) != 2 || got[0] != "tcp proxy.example:1080" {
		t.Errorf("forward dials = %q, want two of tcp proxy.example:1080", got)
	}
}

func roundTrip(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestConnectIPv4AndIPv6Encodings(t *testing.T) {
	cases := []struct {
		network, addr string
		want          []byte
	}{
		{"tcp", "192.0.2.7:443", []byte{5, 1, 0, 1, 192, 0, 2, 7, 1, 187}},
		{"tcp4", "[::ffff:192.0.2.7]:443", []byte{5, 1, 0, 1, 192, 0, 2, 7, 1, 187}},
		{"tcp6", "[2001:db8::1]:53", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 0, 53)},
	}
	for _, tc := range cases {
		d := newFake(t, func(t *testing.T, c net.Conn) {
			if expect(t, c, "greeting", []byte{5, 1, 0}) && send(t, c, 5, 0) && expect(t, c, "request", tc.want) {
				send(t, c, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0)
			}
		})
		c, _ := Parse("socks5://p", d)
		conn, err := c.DialContext(context.Background(), tc.network, tc.addr)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.network, tc.addr, err)
		}
		conn.Close()
	}
}

func TestNetworkMismatch(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) { t.Error("no dial expected") })
	c, _ := Parse("socks5://p", d)
	for _, tc := range []struct{ network, addr, want string }{
		{"udp", "192.0.2.1:53", "network \"udp\" is not supported"},
		{"tcp4", "[2001:db8::1]:80", "not an IPv4 address"},
		{"tcp6", "192.0.2.1:80", "not an IPv6 address"},
		{"tcp", "no-port", "missing port"},
		{"tcp", "h:99999", "port must be a number"},
	} {
		_, err := c.DialContext(context.Background(), tc.network, tc.addr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: err = %v, want it to contain %q", tc.network, tc.addr, err, tc.want)
		}
	}
}

func TestEveryReplyCodeIsATypedError(t *testing.T) {
	for code := socks.GeneralFailure; code <= 0x09; code++ {
		d := newFake(t, func(t *testing.T, c net.Conn) {
			serve5(t, c, code, socks.Addr{})
		})
		c, _ := Parse("socks5://p", d)
		conn, err := c.DialContext(context.Background(), "tcp", "example.com:80")
		if err == nil {
			conn.Close()
			t.Fatalf("reply 0x%02x: no error", byte(code))
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "socks connect" || oe.Net != "tcp" || oe.Addr.String() != "example.com:80" || oe.Source.String() != "p:1080" {
			t.Errorf("reply 0x%02x: err = %#v, want *net.OpError{Op: socks connect, Net: tcp, Source: p:1080, Addr: example.com:80}", byte(code), err)
		}
		var re *socks.ReplyError
		if !errors.As(err, &re) || re.Code != code || re.Version != socks.Version5 {
			t.Errorf("reply 0x%02x: err = %v, want a *socks.ReplyError with that code", byte(code), err)
		}
		for errno, want := range map[syscall.Errno]socks.Reply{
			syscall.ECONNREFUSED: socks.ConnectionRefused,
			syscall.ENETUNREACH:  socks.NetworkUnreachable,
			syscall.EHOSTUNREACH: socks.HostUnreachable,
		} {
			if got := errors.Is(err, errno); got != (code == want) {
				t.Errorf("reply 0x%02x: errors.Is(err, %v) = %v", byte(code), errno, got)
			}
		}
		if !strings.Contains(err.Error(), code.String()) {
			t.Errorf("reply 0x%02x: message %q does not name the reply", byte(code), err)
		}
	}
}

func TestMalformedReply(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if expect(t, c, "greeting", []byte{5, 1, 0}) && send(t, c, 5, 0) {
			socks.ReadRequest(c)
			send(t, c, 4, 0, 0) // wrong version, then hang up
		}
	})
	c, _ := Parse("socks5://p", d)
	_, err := c.DialContext(context.Background(), "tcp", "example.com:80")
	if !errors.Is(err, socks.ErrVersion) {
		t.Errorf("err = %v, want one wrapping socks.ErrVersion", err)
	}
}

func TestSOCKS4Encodings(t *testing.T) {
	name := "nonexistent.invalid"
	cases := []struct {
		url, addr string
		want      []byte
	}{
		{"socks4://p", "192.0.2.7:80", []byte{4, 1, 0, 80, 192, 0, 2, 7, 0}},
		{"socks4://alice@p", "192.0.2.7:80", []byte{4, 1, 0, 80, 192, 0, 2, 7, 'a', 'l', 'i', 'c', 'e', 0}},
		{"socks4a://p", "192.0.2.7:80", []byte{4, 1, 0, 80, 192, 0, 2, 7, 0}},
		{"socks4a://bob@p", name + ":8080", append(append([]byte{4, 1, 0x1f, 0x90, 0, 0, 0, 1, 'b', 'o', 'b', 0}, name...), 0)},
	}
	for _, tc := range cases {
		d := newFake(t, func(t *testing.T, c net.Conn) {
			if expect(t, c, "request", tc.want) && send(t, c, 0, 0x5a, 0, 0, 0, 0, 0, 0) {
				echo(c)
			}
		})
		c, err := Parse(tc.url, d)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := c.DialContext(context.Background(), "tcp", tc.addr)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.url, tc.addr, err)
		}
		roundTrip(t, conn, "x")
		conn.Close()
	}
}

func TestSOCKS4Refusals(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) { t.Error("no dial expected") })
	c4, _ := Parse("socks4://p", d)
	_, err := c4.DialContext(context.Background(), "tcp", "nonexistent.invalid:80")
	if err == nil || !strings.Contains(err.Error(), "socks4a://") || !strings.Contains(err.Error(), "never resolved locally") {
		t.Errorf("domain over socks4: err = %v, want one pointing to socks4a", err)
	}
	for _, u := range []string{"socks4://p", "socks4a://p"} {
		c, _ := Parse(u, d)
		_, err = c.DialContext(context.Background(), "tcp", "[2001:db8::1]:80")
		if err == nil || !strings.Contains(err.Error(), "IPv6") {
			t.Errorf("%s: IPv6 destination: err = %v, want an IPv6 error", u, err)
		}
	}

	for _, code := range []byte{0x5b, 0x5c, 0x5d} {
		d := newFake(t, func(t *testing.T, c net.Conn) {
			if _, err := socks.ReadRequest4(c); err == nil {
				send(t, c, 0, code, 0, 0, 0, 0, 0, 0)
			}
		})
		c, _ := Parse("socks4a://p", d)
		_, err := c.DialContext(context.Background(), "tcp", "example.com:80")
		var re *socks.ReplyError
		if !errors.As(err, &re) || re.Version != socks.Version4 || re.Code4 != code {
			t.Errorf("SOCKS4 reply 0x%02x: err = %v, want a SOCKS4 *socks.ReplyError", code, err)
		}
	}
}

func TestUserPassSuccess(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if !expect(t, c, "greeting", []byte{5, 2, 0, 2}) || !send(t, c, 5, 2) {
			return
		}
		user, pass, err := socks.ReadUserPass(c)
		if err != nil || user != "alice" || pass != "s3cret:x" {
			t.Errorf("fake server: credentials %q %q %v", user, pass, err)
			send(t, c, 1, 1)
			return
		}
		if !send(t, c, 1, 0) {
			return
		}
		if _, err := socks.ReadRequest(c); err == nil && send(t, c, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0) {
			echo(c)
		}
	})
	c, err := Parse("socks5://alice:s3cret%3Ax@p", d)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialContext(context.Background(), "tcp", "example.com:80")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "authenticated")
	conn.Close()
}

func TestUserPassRejected(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if expect(t, c, "greeting", []byte{5, 2, 0, 2}) && send(t, c, 5, 2) {
			socks.ReadUserPass(c)
			send(t, c, 1, 1)
		}
	})
	c, _ := Parse("socks5://alice:wrong@p", d)
	_, err := c.DialContext(context.Background(), "tcp", "example.com:80")
	if !errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), "socks5: username/password rejected by server") {
		t.Errorf("err = %v, want ErrAuthFailed", err)
	}
}

func TestNoAcceptableMethod(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if expect(t, c, "greeting", []byte{5, 1, 0}) {
			send(t, c, 5, 0xff)
		}
	})
	c, _ := Parse("socks5://p", d)
	_, err := c.DialContext(context.Background(), "tcp", "example.com:80")
	if !errors.Is(err, ErrNoAcceptableMethod) || !strings.Contains(err.Error(), "no acceptable authentication method") {
		t.Errorf("err = %v, want ErrNoAcceptableMethod", err)
	}
}

func TestServerChoosesMethodNotOffered(t *testing.T) {
	for _, m := range []byte{2, 1, 0x80} {
		d := newFake(t, func(t *testing.T, c net.Conn) {
			if expect(t, c, "greeting", []byte{5, 1, 0}) {
				send(t, c, 5, m)
			}
		})
		c, _ := Parse("socks5://p", d)
		_, err := c.DialContext(context.Background(), "tcp", "example.com:80")
		if err == nil || !strings.Contains(err.Error(), "not offered") {
			t.Errorf("method 0x%02x: err = %v, want 'not offered'", m, err)
		}
	}
}

// TestCancelMidHandshake: the server reads the greeting and then says
// nothing; cancelling the context must end the dial with the context's
// error (TestMain checks no goroutine is left behind).
func TestCancelMidHandshake(t *testing.T) {
	gotGreeting := make(chan struct{})
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if expect(t, c, "greeting", []byte{5, 1, 0}) {
			close(gotGreeting)
			io.Copy(io.Discard, c) // silent until the client hangs up
		}
	})
	c, _ := Parse("socks5://p", d)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-gotGreeting
		cancel()
	}()
	conn, err := c.DialContext(ctx, "tcp", "example.com:80")
	if err == nil {
		conn.Close()
		t.Fatal("dial succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestDeadlineMidHandshake(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		io.Copy(io.Discard, c)
	})
	c, _ := Parse("socks5://p", d)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.DialContext(ctx, "tcp", "example.com:80")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestCancelledBeforeDial(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) { io.Copy(io.Discard, c) })
	c, _ := Parse("socks5://p", d)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.DialContext(ctx, "tcp", "example.com:80")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestForwardDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c, _ := Parse("socks5://"+addr, nil)
	_, err = c.DialContext(context.Background(), "tcp", "example.com:80")
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("err = %v, want a dial *net.OpError wrapping ECONNREFUSED", err)
	}
	var re *socks.ReplyError
	if errors.As(err, &re) {
		t.Errorf("err = %v carries a ReplyError, but no server replied", err)
	}
}

// tcpFake runs script on each connection to a loopback TCP listener (the
// tests make one) and returns the listener's address; done is closed when
// the first script returns.
func tcpFake(t *testing.T, script func(t *testing.T, c net.Conn)) (addr string, done <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	addr = testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		script(t, c)
		once.Do(func() { close(ch) })
	})
	return addr, ch
}

// echoAfterHalfClose is the target of the half-close tests: it reads until
// the client's FIN and sends everything back.
func echoAfterHalfClose(c net.Conn) {
	b, _ := io.ReadAll(c)
	c.Write(b)
}

// checkHalfClose writes, half-closes through cw and expects the bytes back.
func checkHalfClose(t *testing.T, conn net.Conn, cw interface{ CloseWrite() error }) {
	t.Helper()
	conn.Write([]byte("half"))
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(conn)
	if string(got) != "half" {
		t.Errorf("after half-close read %q, want %q", got, "half")
	}
}

// TestConnectReturnsTCPConn: over a real TCP first hop the connection handed
// back is the *net.TCPConn itself (relays splice it and half-close it).
func TestConnectReturnsTCPConn(t *testing.T) {
	addr, done := tcpFake(t, func(t *testing.T, c net.Conn) {
		if _, ok := serve5(t, c, socks.Succeeded, socks.Addr{}); ok {
			echoAfterHalfClose(c)
		}
	})
	c, _ := Parse("socks5://"+addr, nil)
	conn, err := c.DialContext(context.Background(), "tcp", "example.com:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("conn is %T, want *net.TCPConn", conn)
	}
	checkHalfClose(t, conn, tc)
	testenv.Recv(t, done, "the server's end")
}

// TestDataRightBehindReply: a target that speaks first (a banner) can have
// its bytes arrive in the same read as the server's reply; they must reach
// the caller first, and the connection must still half-close.
func TestDataRightBehindReply(t *testing.T) {
	addr, done := tcpFake(t, func(t *testing.T, c net.Conn) {
		if !expect(t, c, "greeting", []byte{5, 1, 0}) || !send(t, c, 5, 0) {
			return
		}
		if _, err := socks.ReadRequest(c); err != nil {
			t.Errorf("fake server: request: %v", err)
			return
		}
		b, _ := socks.AppendReply(nil, socks.Succeeded, socks.Addr{})
		c.Write(append(b, "220 banner\n"...)) // one segment
		echoAfterHalfClose(c)
	})
	c, _ := Parse("socks5://"+addr, nil)
	conn, err := c.DialContext(context.Background(), "tcp", "mail.example:25")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	banner := make([]byte, len("220 banner\n"))
	if _, err := io.ReadFull(conn, banner); err != nil || string(banner) != "220 banner\n" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("conn is %T, without CloseWrite", conn)
	}
	checkHalfClose(t, conn, cw)
	testenv.Recv(t, done, "the server's end")

	// Over a forward connection that cannot half-close, the wrapper does
	// not pretend to.
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if _, ok := serve5(t, c, socks.Succeeded, socks.Addr{}); ok {
			c.Write([]byte("hi"))
		}
	})
	pc, _ := Parse("socks5://p", d)
	conn2, err := pc.DialContext(context.Background(), "tcp", "example.com:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	conn2.SetDeadline(time.Now().Add(10 * time.Second))
	if _, ok := conn2.(interface{ CloseWrite() error }); ok {
		t.Errorf("%T over net.Pipe has CloseWrite", conn2)
	}
	if b := make([]byte, 2); func() error { _, err := io.ReadFull(conn2, b); return err }() != nil || string(b) != "hi" {
		t.Errorf("read %q after the reply, want %q", b, "hi")
	}
}

func TestURLs(t *testing.T) {
	good := map[string]string{
		"socks5://proxy":                    "proxy:1080",
		"socks5h://proxy:9050":              "proxy:9050",
		"SOCKS5://proxy":                    "proxy:1080",
		"socks4://10.0.0.1":                 "10.0.0.1:1080",
		"socks4a://u@h:1":                   "h:1",
		"socks5://[::1]":                    "[::1]:1080",
		"socks5://u:p@[2001:db8::1]:65535/": "[2001:db8::1]:65535",
	}
	for u, want := range good {
		c, err := Parse(u, nil)
		if err != nil {
			t.Errorf("%s: %v", u, err)
			continue
		}
		if c.Server() != want {
			t.Errorf("%s: server %q, want %q", u, c.Server(), want)
		}
	}
	bad := map[string]string{
		"http://proxy":            `scheme "http" is not supported`,
		"proxy:1080":              `scheme "proxy" is not supported`,
		"//proxy:1080":            "has no scheme",
		"socks5://":               "names no host",
		"socks5://:1080":          "names no host",
		"socks5://h:0":            "port \"0\" is not a number from 1 to 65535",
		"socks5://h:65536":        "port \"65536\"",
		"socks5://h:x":            "invalid port",
		"socks5://u@h":            "username and password must each be 1 to 255 bytes",
		"socks5://u:@h":           "username and password",
		"socks4://u:secret@h":     "has no passwords",
		"socks5://h/path":         "only socks5://[user:pass@]host:port",
		"socks5://h?q=1":          "only socks5://[user:pass@]host:port",
		"socks5://u:secret@h/pth": "only socks5://[user:pass@]host:port",
	}
	for u, want := range bad {
		_, err := Parse(u, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want it to contain %q", u, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error %q leaks the password", u, err)
		}
	}
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil) succeeded")
	}
}

// TestChainSendsHopAsDomain: hop 1 gets a CONNECT to hop 2's address (a
// name, sent as a name), then hop 2's handshake runs inside that stream.
func TestChainSendsHopAsDomain(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		req, ok := serve5(t, c, socks.Succeeded, socks.Addr{})
		if !ok {
			return
		}
		if req.Addr.Name != "hop2.invalid" || req.Addr.Port != 1081 {
			t.Errorf("hop 1 got CONNECT %v, want hop2.invalid:1081", req.Addr)
		}
		// Now hop 2 (SOCKS4a, with a user ID) speaks on the same stream.
		r4, err := socks.ReadRequest4(c)
		if err != nil || r4.Addr.Name != "target.invalid" || r4.UserID != "u2" {
			t.Errorf("hop 2 got %+v, %v", r4, err)
			return
		}
		if send(t, c, 0, 0x5a, 0, 0, 0, 0, 0, 0) {
			echo(c)
		}
	})
	u1, u2 := testenv.MustURL(t, "socks5://hop1.invalid"), testenv.MustURL(t, "socks4a://u2@hop2.invalid:1081")
	c, err := chain(d, u1, u2)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialContext(context.Background(), "tcp", "target.invalid:443")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "two hops")
	conn.Close()
	if got := d.Dials(); len(got) != 1 || got[0] != "tcp hop1.invalid:1080" {
		t.Errorf("forward dials = %q, want only hop 1", got)
	}
	if _, err := c.ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) || !strings.Contains(err.Error(), "chain") {
		t.Errorf("ListenPacket over a chain: err = %v, want ErrUDPUnsupported naming the chain", err)
	}
}

// chain returns a Client for the last hop that reaches it through the
// earlier ones, the first through forward (nil: direct).
func chain(forward Dialer, hops ...*url.URL) (*Client, error) {
	var c *Client
	for _, u := range hops {
		next, err := New(u, forward)
		if err != nil {
			return nil, err
		}
		c, forward = next, next
	}
	return c, nil
}

// pipeServerDialer answers every dial with a minimal SOCKS5 server over
// net.Pipe, so BenchmarkHandshakePipe measures the client's own cost.
type pipeServerDialer struct{ wg sync.WaitGroup }

func (d *pipeServerDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	cli, srv := net.Pipe()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer srv.Close()
		if _, err := socks.ReadGreeting(srv); err != nil {
			return
		}
		srv.Write([]byte{5, 0})
		if _, err := socks.ReadRequest(srv); err != nil {
			return
		}
		srv.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	}()
	return cli, nil
}

// BenchmarkHandshakePipe: one SOCKS5 CONNECT handshake (greeting, method,
// request with a name, reply) against an in-memory server.
func BenchmarkHandshakePipe(b *testing.B) {
	d := &pipeServerDialer{}
	defer d.wg.Wait()
	c, _ := Parse("socks5://p", d)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		conn, err := c.DialContext(ctx, "tcp", "example.com:443")
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}
