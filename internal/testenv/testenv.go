// Package testenv is what the tests share about their environment: root,
// peer programs, and the rule that under CI=true a test that cannot run
// fails instead of skipping.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// CI reports whether the tests run under CI (CI=true), where skipping for a
// missing privilege or peer is a failure.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t loudly with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if CI() {
		t.Fatalf("%s, and CI=true: failing instead of skipping (./scripts/test.sh provides it)", reason)
	}
	t.Skipf("SKIPPING: %s (run ./scripts/test.sh as root)", reason)
}

// NeedRoot makes t need root, for why (a TUN device, network namespaces...).
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root ("+why+")")
	}
}

// NeedTool returns the path of a peer program, looking in PATH and the sbin
// directories, or makes t unavailable naming the Debian package to install.
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Unavailable(t, name+" is not installed (Debian package "+pkg+")")
	return ""
}

// Buffer is a bytes.Buffer safe for a process's or goroutine's writes while
// a test reads it.
type Buffer struct {
	// Max, when positive, bounds what is kept: writes once the buffer
	// holds more than Max bytes are discarded (and reported as written), so
	// a chatty peer program cannot fill memory.
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Max > 0 && s.b.Len() > s.Max {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TCPPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Server is what Serve runs: a server with the usual
// Serve(ctx, listener) shape (socksserver.Server, stun and api servers).
type Server interface {
	Serve(ctx context.Context, ln net.Listener) error
}

// Serve runs s on a fresh 127.0.0.1 TCP listener until the test ends, then
// cancels its context and waits for Serve to return. It returns the
// listener's address.
func Serve(t testing.TB, s Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// TCPServer listens on network/addr ("tcp", "127.0.0.1:0") and runs serve
// on each connection, which it closes when serve returns. When the test
// ends the listener and every open connection are closed and the
// goroutines waited for. It returns the listener's address.
func TCPServer(t testing.TB, network, addr string, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// Echo copies what c reads back to c until EOF, then half-closes c's write
// side when c is a TCP connection (or anything with CloseWrite).
func Echo(c net.Conn) {
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// TCPEcho starts a TCP echo server (see Echo) on network/addr, for example
// "tcp", "127.0.0.1:0", stopped when the test ends. It returns the
// listener's address.
func TCPEcho(t testing.TB, network, addr string) string {
	t.Helper()
	return TCPServer(t, network, addr, Echo)
}

// UDPEcho starts a loopback UDP echo server, stopped when the test ends.
func UDPEcho(t testing.TB) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDP(b)
			if err != nil {
				return
			}
			pc.WriteToUDP(b[:n], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc
}

// ClosedPort returns a loopback TCP address that refuses connections for
// the rest of the test: a socket is bound to it but never listens, so no
// other listener (of this or a concurrently running test binary) can take
// the port, as it could a port freed by closing a listener.
func ClosedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
}

// MustURL parses s or fails the test.
func MustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Dialer is a scripted forward dialer (the DialContext of socksclient's
// and socksserver's Dialer interfaces) that records every dial. With Err
// set, every dial fails with Err. Otherwise each dial returns one end of a
// net.Pipe and runs Serve on the other end, which is closed when Serve
// returns; use NewDialer so that the test waits for those goroutines.
type Dialer struct {
	Err   error
	Serve func(c net.Conn)

	mu     sync.Mutex
	dialed []string
	wg     sync.WaitGroup
}

// NewDialer returns a Dialer that runs serve on the server end of every
// dial; the test's cleanup waits until every serve has returned.
func NewDialer(t testing.TB, serve func(c net.Conn)) *Dialer {
	d := &Dialer{Serve: serve}
	t.Cleanup(d.wg.Wait)
	return d
}

// DialContext records "network address" and fails with d.Err or returns a
// pipe served by d.Serve.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, network+" "+address)
	d.mu.Unlock()
	if d.Err != nil {
		return nil, d.Err
	}
	if d.Serve == nil {
		return nil, errors.New("testenv.Dialer: neither Err nor Serve is set")
	}
	cli, srv := net.Pipe()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer srv.Close()
		d.Serve(srv)
	}()
	return cli, nil
}

// Dials returns what was dialed so far, "network address" each, in order.
func (d *Dialer) Dials() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dialed...)
}

// Goroutines counts the goroutines whose stack trace (as runtime.Stack
// prints it, one goroutine per paragraph) match accepts.
func Goroutines(match func(stack string) bool) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if match(g) {
			count++
		}
	}
	return count
}
