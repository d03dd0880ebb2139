package socksserver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// mustNotDial is the Dialer of a case that must be refused before any dial:
// the test checks that it recorded none.
func mustNotDial() *testenv.Dialer { return &testenv.Dialer{Err: errors.New("dialed although denied")} }

func opErr(err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: err}
}

// step is one exchange of a raw conversation: bytes to send, then bytes
// expected back. closeWrite half-closes after sending.
type step struct {
	send       []byte
	closeWrite bool
	want       []byte
}

func fail5(code socks.Reply) []byte { return []byte{5, byte(code), 0, 1, 0, 0, 0, 0, 0, 0} }

var fail4 = []byte{0, 0x5B, 0, 0, 0, 0, 0, 0}

// TestFailures runs raw-byte conversations that must end in the reply the
// protocol has for the case (or none) and then a closed connection.
func TestFailures(t *testing.T) {
	closed := testenv.ClosedPort(t)
	somewhere := mustAP("192.0.2.1:80")
	greet := step{send: []byte{5, 1, 0}, want: []byte{5, 0}}
	users := map[string]string{"alice": "s3cret"}
	long := append([]byte{4, 1, 0, 80, 127, 0, 0, 1}, bytes.Repeat([]byte{'a'}, 300)...)
	long = append(long, 0)

	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{name: "wrong version", steps: []step{{send: []byte{6, 1, 0}}}},
		{name: "version 0", steps: []step{{send: []byte{0, 0, 0, 0}}}},
		{name: "zero methods", steps: []step{{send: []byte{5, 0}}}},
		{name: "greeting truncated", steps: []step{{send: []byte{5, 3, 0}, closeWrite: true}}},
		{name: "no acceptable method", steps: []step{{send: []byte{5, 1, 2}, want: []byte{5, 0xFF}}}},
		{name: "GSSAPI is never selected", steps: []step{{send: []byte{5, 1, 1}, want: []byte{5, 0xFF}}}},
		{name: "GSSAPI offered first, no-auth chosen", steps: []step{
			{send: []byte{5, 2, 1, 0}, want: []byte{5, 0}},
			{send: req5(1, closed), want: fail5(socks.ConnectionRefused)},
		}},
		{name: "auth required, client offers only no-auth", cfg: Config{Users: users},
			steps: []step{{send: []byte{5, 1, 0}, want: []byte{5, 0xFF}}}},
		{name: "wrong password", cfg: Config{Users: users}, steps: []step{
			{send: []byte{5, 1, 2}, want: []byte{5, 2}},
			{send: append(append([]byte{1, 5}, "alice"...), append([]byte{5}, "wrong"...)...), want: []byte{1, 1}},
		}},
		{name: "unknown user", cfg: Config{Users: users}, steps: []step{
			{send: []byte{5, 1, 2}, want: []byte{5, 2}},
			{send: append(append([]byte{1, 3}, "bob"...), append([]byte{6}, "s3cret"...)...), want: []byte{1, 1}},
		}},
		{name: "username/password version wrong", cfg: Config{Users: users}, steps: []step{
			{send: []byte{5, 1, 2}, want: []byte{5, 2}},
			{send: []byte{5, 1, 'a', 1, 'b'}},
		}},
		{name: "username/password truncated", cfg: Config{Users: users}, steps: []step{
			{send: []byte{5, 1, 2}, want: []byte{5, 2}},
			{send: []byte{1, 5, 'a', 'l'}, closeWrite: true},
		}},
		{name: "unknown command", steps: []step{greet,
			{send: []byte{5, 9, 0, 1, 127, 0, 0, 1, 0, 80}, want: fail5(socks.CommandNotSupported)}}},
		{name: "unknown address type", steps: []step{greet,
			{send: []byte{5, 1, 0, 5, 127, 0, 0, 1, 0, 80}, want: fail5(socks.AddressTypeNotSupported)}}},
		{name: "request truncated", steps: []step{greet, {send: []byte{5, 1, 0, 1, 127, 0}, closeWrite: true}}},
		{name: "request with empty domain", steps: []step{greet,
			{send: []byte{5, 1, 0, 3, 0, 0, 80}, want: fail5(socks.GeneralFailure)}}},
		{name: "refused", steps: []step{greet, {send: req5(1, closed), want: fail5(socks.ConnectionRefused)}}},
		{name: "timeout is host unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(context.DeadlineExceeded)}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.HostUnreachable)}}},
		{name: "i/o timeout is host unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(os.ErrDeadlineExceeded)}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.HostUnreachable)}}},
		{name: "host unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(os.NewSyscallError("connect", syscall.EHOSTUNREACH))}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.HostUnreachable)}}},
		{name: "name not found is host unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(&net.DNSError{Err: "no such host", Name: "nx.invalid", IsNotFound: true})}},
			steps: []step{greet, {send: req5Name(1, "nx.invalid", 80), want: fail5(socks.HostUnreachable)}}},
		{name: "network unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(os.NewSyscallError("connect", syscall.ENETUNREACH))}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.NetworkUnreachable)}}},
		{name: "TTL expired from upstream", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(&socks.ReplyError{Version: 5, Code: socks.TTLExpired})}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.TTLExpired)}}},
		{name: "dialer denies", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(socks.ErrNotAllowed)}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.NotAllowed)}}},
		{name: "other dial error is general failure", cfg: Config{Dialer: &testenv.Dialer{Err: errors.New("boom")}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.GeneralFailure)}}},
		{name: "deny-dest", cfg: Config{Dialer: mustNotDial(), DenyDest: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.NotAllowed)}}},
		{name: "deny-port", cfg: Config{Dialer: mustNotDial(), DenyPorts: []PortRange{{Lo: 25, Hi: 25}, {Lo: 70, Hi: 90}}},
			steps: []step{greet, {send: req5(1, somewhere), want: fail5(socks.NotAllowed)}}},
		{name: "deny-port for a domain", cfg: Config{Dialer: mustNotDial(), DenyPorts: []PortRange{{Lo: 80, Hi: 80}}},
			steps: []step{greet, {send: req5Name(1, "example.com", 80), want: fail5(socks.NotAllowed)}}},
		{name: "deny-dest for a domain resolving into it", cfg: Config{
			Dialer:   mustNotDial(),
			DenyDest: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			LookupNetIP: func(ctx context.Context, network, host string) ([]netip.Addr, error) {
				return []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("10.1.2.3")}, nil
			},
		}, steps: []step{greet, {send: req5Name(1, "blocked.example", 443), want: fail5(socks.NotAllowed)}}},

		// SOCKS4 and SOCKS4a
		{name: "SOCKS4 refused", steps: []step{{send: req4(1, closed, "", ""), want: fail4}}},
		{name: "SOCKS4 unknown command", steps: []step{{send: req4(3, closed, "", ""), want: fail4}}},
		{name: "SOCKS4 oversize USERID", steps: []step{{send: long, want: fail4}}},
		{name: "SOCKS4 truncated", steps: []step{{send: []byte{4, 1, 0}, closeWrite: true}}},
		{name: "SOCKS4 USERID not terminated", steps: []step{{send: []byte{4, 1, 0, 80, 127, 0, 0, 1, 'a', 'b'}, closeWrite: true}}},
		{name: "SOCKS4a empty domain", steps: []step{{send: []byte{4, 1, 0, 80, 0, 0, 0, 1, 0, 0}, want: fail4}}},
		{name: "SOCKS4 deny-dest", cfg: Config{Dialer: mustNotDial(), DenyDest: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
			steps: []step{{send: req4(1, closed, "", ""), want: fail4}}},
		{name: "SOCKS4 network unreachable", cfg: Config{Dialer: &testenv.Dialer{Err: opErr(syscall.ENETUNREACH)}},
			steps: []step{{send: req4(1, somewhere, "", ""), want: fail4}}},
		{name: "SOCKS4 refused when users are required", cfg: Config{Users: users},
			steps: []step{{send: req4(1, closed, "alice", ""), want: fail4}}},
		{name: "SOCKS4 USERID must match", cfg: Config{Users: users, Socks4UserMustMatch: true},
			steps: []step{{send: req4(1, closed, "mallory", ""), want: fail4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd, _ := tt.cfg.Dialer.(*testenv.Dialer)
			srv := startServer(t, tt.cfg)
			c := dial(t, srv.addr)
			for _, s := range tt.steps {
				send(t, c, s.send)
				if s.closeWrite {
					c.CloseWrite()
				}
				if s.want != nil {
					expect(t, c, s.want)
				}
			}
			expectClosed(t, c)
			if fd != nil && strings.HasPrefix(tt.name, "deny") && len(fd.Dials()) != 0 {
				t.Errorf("the dialer was called for a denied target")
			}
		})
	}
}

// TestFailureClosesWhileClientKeepsWriting: after a failure reply the
// connection closes within FailureCloseDelay even if the client neither
// reads nor closes, and the reply is not lost.
func TestFailureClosesWhileClientKeepsWriting(t *testing.T) {
	srv := startServer(t, Config{FailureCloseDelay: 100 * time.Millisecond})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, append(req5(1, testenv.ClosedPort(t)), bytes.Repeat([]byte{'x'}, 1000)...))
	expect(t, c, fail5(socks.ConnectionRefused))
	expectClosed(t, c)
}

func TestDeniedIsLogged(t *testing.T) {
	srv := startServer(t, Config{DenyDest: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(1, mustAP("192.0.2.1:80")))
	expect(t, c, fail5(socks.NotAllowed))
	r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["target"] == "192.0.2.1:80" })
	if r["level"] != "WARN" || r["reply"] != socks.NotAllowed.String() || !strings.Contains(r["err"].(string), "deny-dest 192.0.2.0/24") {
		t.Errorf("log record %v", r)
	}
}

// connectOK runs a CONNECT conversation to the peerEcho server at target
// and checks the bound address against what the target saw, the echo and
// the half-close in both directions.
func connectOK(t *testing.T, c *net.TCPConn, request []byte, v4 bool) {
	t.Helper()
	send(t, c, request)
	var rep byte
	var bound netip.AddrPort
	if v4 {
		rep, bound = readReply4(t, c)
		if rep != 0x5A {
			t.Fatalf("SOCKS4 reply 0x%02x", rep)
		}
	} else {
		rep, bound = readReply5(t, c)
		if rep != 0 {
			t.Fatalf("reply %v", socks.Reply(rep))
		}
	}
	seen := mustAP(readLine(t, c))
	if bound != seen {
		t.Errorf("reply's bound address %v, the target saw the connection from %v", bound, seen)
	}
	send(t, c, []byte("hello through socks"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello through socks" {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

func TestConnect(t *testing.T) {
	echo4 := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	users := map[string]string{"alice": "s3cret"}
	auth := append(append([]byte{1, 5}, "alice"...), append([]byte{6}, "s3cret"...)...)

	t.Run("SOCKS5 IPv4", func(t *testing.T) {
		srv := startServer(t, Config{})
		c := dial(t, srv.addr)
		noAuth(t, c)
		connectOK(t, c, req5(1, echo4), false)
		r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["target"] == echo4.String() })
		if r["command"] != "CONNECT" || r["reply"] != "succeeded" || r["up"] != float64(19) || r["down"] != float64(19+len(echo4.String())+1) || r["version"] != "socks5" {
			t.Errorf("log record %v", r)
		}
		if _, ok := r["duration"]; !ok {
			t.Errorf("log record has no duration: %v", r)
		}
	})
	t.Run("SOCKS5 IPv6", func(t *testing.T) {
		ln, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("no IPv6 loopback: %v", err)
			}
			t.Skipf("SKIPPING: no IPv6 loopback: %v", err)
		}
		ln.Close()
		echo6 := mustAP(peerEcho(t, "tcp6", "[::1]:0"))
		srv := startServer(t, Config{}, "[::1]:0")
		c := dial(t, srv.addr)
		noAuth(t, c)
		connectOK(t, c, req5(1, echo6), false)
	})
	t.Run("SOCKS5 domain", func(t *testing.T) {
		var seen atomic.Value
		srv := startServer(t, Config{Dialer: dialerFunc(func(ctx context.Context, network, address string) (net.Conn, error) {
			seen.Store(address)
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+strings.Split(address, ":")[1])
		})})
		c := dial(t, srv.addr)
		noAuth(t, c)
		connectOK(t, c, req5Name(1, "localhost", echo4.Port()), false)
		if got := seen.Load(); got != net.JoinHostPort("localhost", itoa(echo4.Port())) {
			t.Errorf("the Dialer got %v, want the domain passed through unchanged", got)
		}
	})
	t.Run("SOCKS5 domain, direct dialer", func(t *testing.T) {
		srv := startServer(t, Config{})
		c := dial(t, srv.addr)
		noAuth(t, c)
		connectOK(t, c, req5Name(1, "localhost", echo4.Port()), false)
	})
	t.Run("SOCKS5 username/password", func(t *testing.T) {
		srv := startServer(t, Config{Users: users})
		c := dial(t, srv.addr)
		send(t, c, []byte{5, 2, 0, 2})
		expect(t, c, []byte{5, 2})
		send(t, c, auth)
		expect(t, c, []byte{1, 0})
		connectOK(t, c, req5(1, echo4), false)
		r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["user"] == "alice" })
		if r["reply"] != "succeeded" {
			t.Errorf("log record %v", r)
		}
	})
	t.Run("SOCKS5 pipelined", func(t *testing.T) {
		// Greeting, request and data in one segment: the server must not
		// read past each message.
		srv := startServer(t, Config{})
		c := dial(t, srv.addr)
		msg := append(append([]byte{5, 1, 0}, req5(1, echo4)...), "early"...)
		send(t, c, msg)
		expect(t, c, []byte{5, 0})
		if rep, _ := readReply5(t, c); rep != 0 {
			t.Fatalf("reply %d", rep)
		}
		readLine(t, c)
		expect(t, c, []byte("early"))
		c.CloseWrite()
		io.ReadAll(c)
		r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["target"] == echo4.String() })
		if r["up"] != float64(5) {
			t.Errorf("log record %v: up should count the 5 bytes sent with the request", r)
		}
	})
	t.Run("SOCKS4 pipelined", func(t *testing.T) {
		srv := startServer(t, Config{})
		c := dial(t, srv.addr)
		send(t, c, append(req4(1, echo4, "someone", ""), "early4"...))
		if rep, _ := readReply4(t, c); rep != 0x5A {
			t.Fatalf("SOCKS4 reply 0x%02x", rep)
		}
		readLine(t, c)
		expect(t, c, []byte("early4"))
	})
	t.Run("SOCKS4", func(t *testing.T) {
		srv := startServer(t, Config{})
		connectOK(t, dial(t, srv.addr), req4(1, echo4, "someone", ""), true)
	})
	t.Run("SOCKS4a", func(t *testing.T) {
		srv := startServer(t, Config{})
		connectOK(t, dial(t, srv.addr), req4(1, echo4, "", "localhost"), true)
		r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return strings.HasPrefix(m["target"].(string), "localhost:") })
		if r["version"] != "socks4a" {
			t.Errorf("log record %v", r)
		}
	})
	t.Run("SOCKS4 USERID matches", func(t *testing.T) {
		srv := startServer(t, Config{Users: users, Socks4UserMustMatch: true})
		connectOK(t, dial(t, srv.addr), req4(1, echo4, "alice", ""), true)
	})
}

type dialerFunc func(ctx context.Context, network, address string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return f(ctx, network, address)
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestHandshakeTimeout(t *testing.T) {
	srv := startServer(t, Config{HandshakeTimeout: 200 * time.Millisecond})
	c := dial(t, srv.addr)
	send(t, c, []byte{5, 1}) // and then nothing
	expectClosed(t, c)
}

func TestAllowClients(t *testing.T) {
	srv := startServer(t, Config{AllowClients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	c := dial(t, srv.addr)
	c.Write([]byte{5, 1, 0})
	expectClosed(t, c)
	srv.logs.waitRecord(t, "client not allowed", func(map[string]any) bool { return true })

	srv = startServer(t, Config{AllowClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	noAuth(t, dial(t, srv.addr))
}

func TestMaxConns(t *testing.T) {
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	srv := startServer(t, Config{MaxConns: 1})
	first := dial(t, srv.addr)
	noAuth(t, first)
	send(t, first, req5(1, echo))
	if rep, _ := readReply5(t, first); rep != 0 {
		t.Fatalf("reply %d", rep)
	}
	second := dial(t, srv.addr)
	second.Write([]byte{5, 1, 0})
	expectClosed(t, second)
	srv.logs.waitRecord(t, "connection limit reached; new connections closed", func(map[string]any) bool { return true })

	first.Close()
	waitIdle(t, srv.Server)
	noAuth(t, dial(t, srv.addr))
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Socks4UserMustMatch: true},
		{Users: map[string]string{"": "x"}},
		{Users: map[string]string{"a": ""}},
		{Users: map[string]string{"a": strings.Repeat("p", 256)}},
		{DenyPorts: []PortRange{{Lo: 9, Hi: 8}}},
		{DenyDest: []netip.Prefix{{}}},
		{MaxConns: -1},
		{FailureCloseDelay: 11 * time.Second},
		{UDPReassemblyTimeout: time.Second},
		{UDPMaxReassembly: 70000},
		{HandshakeTimeout: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
