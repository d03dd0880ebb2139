package socksserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(serveChild())
	}
	goleak.VerifyTestMain(m)
}

// ioTimeout bounds every blocking step of a test, so a broken server makes
// a test fail rather than hang. It is a safety net, not an assertion.
const ioTimeout = 10 * time.Second

// logSink collects the server's JSON log lines.
type logSink struct{ testenv.Buffer }

// records returns the parsed log records whose msg is msg.
func (l *logSink) records(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitRecord waits (bounded) until a log record with msg satisfies ok.
func (l *logSink) waitRecord(t testing.TB, msg string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	for i := 0; i < 500; i++ {
		for _, r := range l.records(msg) {
			if ok(r) {
				return r
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q log record as expected; log:\n%s", msg, l)
	return nil
}

// testServer is a running server on a loopback port.
type testServer struct {
	*Server
	addr string
	logs *logSink
	// lnClosed is closed when the server closes its listener. Tests wait
	// on it rather than dialing the port: with other packages' tests
	// running, a freed port can be taken by another listener at once.
	lnClosed chan struct{}
}

// startServer runs a server with cfg on 127.0.0.1:0 (or listen, when
// given) and shuts it down when the test ends.
func startServer(t testing.TB, cfg Config, listen ...string) *testServer {
	t.Helper()
	logs := &logSink{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.FailureCloseDelay == 0 {
		cfg.FailureCloseDelay = 2 * time.Second
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	at := "127.0.0.1:0"
	if len(listen) > 0 {
		at = listen[0]
	}
	raw, err := net.Listen("tcp", at)
	if err != nil {
		t.Fatal(err)
	}
	ln := &notifyListener{Listener: raw, closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		s.Shutdown(sctx)
		scancel()
		cancel()
		if err := testenv.Recv(t, done, "Serve's return"); err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	return &testServer{Server: s, addr: ln.Addr().String(), logs: logs, lnClosed: ln.closed}
}

// dial opens a raw TCP connection to the server with a safety deadline.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func send(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write %x: %v", b, err)
	}
}

// expect reads len(want) bytes and compares them.
func expect(t testing.TB, c net.Conn, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if n, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %d bytes (want %x): got %x, %v", len(want), want, got[:n], err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
}

// expectClosed asserts that the server has closed the connection: the next
// read sees EOF (or a reset) with no further bytes, before the safety
// deadline.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Fatalf("want the connection closed, got %d more bytes: %x", len(b), b)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want the connection closed, read: %v", err)
	}
}

// readReply5 reads a SOCKS5 reply and returns REP and the bound address.
func readReply5(t testing.TB, c net.Conn) (byte, netip.AddrPort) {
	t.Helper()
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if hdr[0] != 5 || hdr[2] != 0 {
		t.Fatalf("bad reply header %x", hdr)
	}
	var ip netip.Addr
	switch hdr[3] {
	case 1:
		b := make([]byte, 4)
		io.ReadFull(c, b)
		ip = netip.AddrFrom4([4]byte(b))
	case 4:
		b := make([]byte, 16)
		io.ReadFull(c, b)
		ip = netip.AddrFrom16([16]byte(b))
	default:
		t.Fatalf("reply ATYP %d", hdr[3])
	}
	p := make([]byte, 2)
	if _, err := io.ReadFull(c, p); err != nil {
		t.Fatalf("read reply port: %v", err)
	}
	return hdr[1], netip.AddrPortFrom(ip, binary.BigEndian.Uint16(p))
}

// readReply4 reads a SOCKS4 reply.
func readReply4(t testing.TB, c net.Conn) (byte, netip.AddrPort) {
	t.Helper()
	b := make([]byte, 8)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read SOCKS4 reply: %v", err)
	}
	if b[0] != 0 {
		t.Fatalf("SOCKS4 reply VN %d", b[0])
	}
	return b[1], netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
}

// noAuth does the SOCKS5 greeting for no authentication.
func noAuth(t testing.TB, c net.Conn) {
	t.Helper()
	send(t, c, []byte{5, 1, 0})
	expect(t, c, []byte{5, 0})
}

// req5 encodes a SOCKS5 request for an IP target.
func req5(cmd byte, ap netip.AddrPort) []byte {
	b := []byte{5, cmd, 0}
	if ap.Addr().Is4() {
		ip := ap.Addr().As4()
		b = append(append(b, 1), ip[:]...)
	} else {
		ip := ap.Addr().As16()
		b = append(append(b, 4), ip[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// req5Name encodes a SOCKS5 request for a domain target.
func req5Name(cmd byte, host string, port uint16) []byte {
	b := append([]byte{5, cmd, 0, 3, byte(len(host))}, host...)
	return binary.BigEndian.AppendUint16(b, port)
}

// req4 encodes a SOCKS4 (or, with host, SOCKS4a) request.
func req4(cmd byte, ap netip.AddrPort, user, host string) []byte {
	b := binary.BigEndian.AppendUint16([]byte{4, cmd}, ap.Port())
	ip := ap.Addr().As4()
	if host != "" {
		ip = [4]byte{0, 0, 0, 1}
	}
	b = append(append(b, ip[:]...), user...)
	b = append(b, 0)
	if host != "" {
		b = append(append(b, host...), 0)
	}
	return b
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// peerEcho starts a loopback TCP server that first writes the remote
// address it sees and a newline, then echoes and half-closes after EOF.
func peerEcho(t testing.TB, network, addr string) string {
	t.Helper()
	return testenv.TCPServer(t, network, addr, func(c net.Conn) {
		io.WriteString(c, c.RemoteAddr().String()+"\n")
		testenv.Echo(c)
	})
}

// readLine reads up to and without '\n', one byte at a time.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	var sb strings.Builder
	b := make([]byte, 1)
	for i := 0; i < 200; i++ {
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("read line: %v (so far %q)", err, sb.String())
		}
		if b[0] == '\n' {
			return sb.String()
		}
		sb.WriteByte(b[0])
	}
	t.Fatalf("line too long: %q", sb.String())
	return ""
}

// waitIdle waits (bounded) until the server serves no connection.
func waitIdle(t testing.TB, s *Server) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if s.Active() == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("server still serves %d connections", s.Active())
}
