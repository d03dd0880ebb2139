package socksclient

// End-to-end tests of the client against our own socksserver on loopback:
// the commands Dante and microsocks cannot check (SOCKS4a names, UDP
// fragment reassembly by the server, the server dropping foreign UDP).

import (
	"bytes"
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksserver"
)

// ourServer serves cfg on a free loopback port until the test ends.
func ourServer(t testing.TB, cfg socksserver.Config) string {
	t.Helper()
	srv, err := socksserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		cancel()
		testenv.Recv(t, done, "the server's end")
	})
	return ln.Addr().String()
}

func TestOurServerConnect(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{})
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(echoAddr)
	for _, u := range []string{"socks5://", "socks4://", "socks4a://someone@"} {
		c, err := Parse(u+proxy, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkConnect(t, c, echoAddr, true)
		if u != "socks4://" {
			checkConnect(t, c, "localhost:"+port, true) // a name, resolved by the server
		}
	}
}

func TestOurServerAuth(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{Users: map[string]string{"alice": "s3cret"}})
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	c, _ := Parse("socks5://alice:s3cret@"+proxy, nil)
	checkConnect(t, c, echoAddr, true)
	bad, _ := Parse("socks5://alice:nope@"+proxy, nil)
	if _, err := bad.DialContext(context.Background(), "tcp", echoAddr); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("wrong password: %v, want ErrAuthFailed", err)
	}
	anon, _ := Parse("socks5://"+proxy, nil)
	if _, err := anon.DialContext(context.Background(), "tcp", echoAddr); !errors.Is(err, ErrNoAcceptableMethod) {
		t.Errorf("no credentials: %v, want ErrNoAcceptableMethod", err)
	}
}

func TestOurServerBind(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{})
	for _, u := range []string{"socks5://", "socks4://"} {
		c, _ := Parse(u+proxy, nil)
		t.Run(u, func(t *testing.T) { checkBind(t, c) })
	}
}

// TestOurServerUDPFragmented: the client splits every datagram into
// 100-byte fragments; the server must reassemble them before sending to
// the echo, or the echo's answer would not match.
func TestOurServerUDPFragmented(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{})
	uecho := testenv.UDPEcho(t)
	c, _ := Parse("socks5://"+proxy, nil)
	c.UDPFragmentSize = 100
	checkUDP(t, c, uecho, 1, 100, 101, 1000, 12000)
}

// TestOurServerUDPForeignSourceDropped: a datagram sent to the relay from a
// socket that is not the client's must not be forwarded.
func TestOurServerUDPForeignSourceDropped(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{})
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	c, _ := Parse("socks5://"+proxy, nil)
	pc, err := c.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := sink.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 2048)
	sink.SetReadDeadline(time.Now().Add(10 * time.Second))

	// The client speaks first, so the server knows its UDP address.
	if _, err := pc.WriteTo([]byte("first"), to); err != nil {
		t.Fatal(err)
	}
	if n, _, err := sink.ReadFromUDP(buf); err != nil || string(buf[:n]) != "first" {
		t.Fatalf("sink got %q, %v", buf[:n], err)
	}

	// A stranger sends a well-formed datagram for the sink to the relay,
	// then the client sends another. The sink must see only the client's.
	foreign, err := net.DialUDP("udp", nil, pc.RelayAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	hdr := []byte{0, 0, 0, 1, 127, 0, 0, 1, byte(to.Port >> 8), byte(to.Port)}
	if _, err := foreign.Write(append(hdr, "foreign"...)); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.WriteTo([]byte("second"), to); err != nil {
		t.Fatal(err)
	}
	n, _, err := sink.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "second" {
		t.Fatalf("sink got %q after the foreign datagram, want %q: the relay forwarded a stranger's datagram", buf[:n], "second")
	}
	// Replies still reach the client, and none reach the stranger.
	if _, err := sink.WriteToUDP([]byte("reply"), mustUDPAddrOf(t, pc, sink)); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "reply" || from.String() != to.String() {
		t.Fatalf("client got %q from %v, %v", buf[:n], from, err)
	}
}

// mustUDPAddrOf returns the server's outbound address as the sink saw it
// (where the sink's replies must go): it asks the client to send once more
// and reads the source.
func mustUDPAddrOf(t *testing.T, pc *UDPConn, sink *net.UDPConn) *net.UDPAddr {
	t.Helper()
	if _, err := pc.WriteTo([]byte("where"), sink.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, from, err := sink.ReadFromUDP(buf)
	if err != nil || !bytes.Equal(buf[:n], []byte("where")) {
		t.Fatalf("sink got %q, %v", buf[:n], err)
	}
	return from
}

// TestOurServerChain: client -> our server -> our server (with auth) ->
// echo, and UDP refused over the chain.
func TestOurServerChain(t *testing.T) {
	first := ourServer(t, socksserver.Config{})
	second := ourServer(t, socksserver.Config{Users: map[string]string{"bob": "pw"}})
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	c, err := chain(nil, testenv.MustURL(t, "socks5://"+first), testenv.MustURL(t, "socks5://bob:pw@"+second))
	if err != nil {
		t.Fatal(err)
	}
	checkConnect(t, c, echoAddr, true)
	if _, err := c.ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) {
		t.Errorf("UDP over a chain: %v, want ErrUDPUnsupported", err)
	}
}

// TestOurServerRefusal: the server's reply for a closed port comes back as
// a ReplyError that errors.Is sees as ECONNREFUSED.
func TestOurServerRefusal(t *testing.T) {
	proxy := ourServer(t, socksserver.Config{FailureCloseDelay: time.Millisecond})
	closed := testenv.ClosedPort(t).String()
	c, _ := Parse("socks5://"+proxy, nil)
	_, err := c.DialContext(context.Background(), "tcp", closed)
	var re *socks.ReplyError
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &re) || re.Code != socks.ConnectionRefused {
		t.Errorf("CONNECT to a closed port: %v, want ECONNREFUSED through the ReplyError", err)
	}
}

// BenchmarkConnectOurServer measures one CONNECT and one echoed byte
// through our socksserver on loopback.
func BenchmarkConnectOurServer(b *testing.B) {
	benchConnect(b, ourServer(b, socksserver.Config{}))
}
