package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestServerUsageErrors(t *testing.T) {
	dir := t.TempDir()
	badUsers := filepath.Join(dir, "users")
	os.WriteFile(badUsers, []byte("# users\nalice:pw\nbob\n"), 0o600)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"--listen", "0.0.0.0:0"}, want: "refusing to listen on 0.0.0.0:0"},
		{args: []string{"--listen", ":1080"}, want: "every interface"},
		{args: []string{"--listen", "nohost"}, want: "want host:port"},
		{args: []string{"--deny-port", "9-8"}, want: "first port must not exceed"},
		{args: []string{"--deny-port", "http"}, want: "want a port N or a range N-M"},
		{env: map[string]string{"TUNSOCKS_DENY_PORT": "70000"}, want: "want a port N or a range N-M"},
		{args: []string{"--allow-client", "10.0.0.0/33"}, want: "want a CIDR"},
		{args: []string{"--deny-dest", "example.com"}, want: "want a CIDR"},
		{args: []string{"--user", "alice"}, want: "want NAME:PASSWORD"},
		{args: []string{"--user", "a:1", "--user", "a:2"}, want: "given twice"},
		{args: []string{"--users", filepath.Join(dir, "missing")}, want: "no such file"},
		{args: []string{"--users", badUsers}, want: badUsers + ":3: want user:password"},
		{args: []string{"--socks4-userid-must-match"}, want: "needs users"},
		{args: []string{"--handshake-timeout", "0s"}, want: "want a positive duration"},
		{args: []string{"--bind-timeout", "-1s"}, want: "want a positive duration"},
		{args: []string{"--idle-timeout", "-1s"}, want: "or 0 to disable"},
		{args: []string{"--max-conns", "-1"}, want: "want 0 (unlimited)"},
		{args: []string{"--grace", "-1s"}, want: "--grace"},
		{args: []string{"--external-addr", "nat.example"}, want: "want an IP address"},
		{args: []string{"--max-handshakes", "0"}, want: "--max-handshakes 0: want a positive number, or -1"},
		{args: []string{"--max-handshakes-per-client", "-2"}, want: "want a positive number, or -1"},
		{args: []string{"--auth-failures", "0"}, want: "--auth-failures 0"},
		{args: []string{"--auth-failure-delay", "5s"}, want: "want 0 (none) up to 4s"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr testenv.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			code := run(ctx, append([]string{"tunsocks", "server"}, tc.args...), &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), exitUsage, tc.want)
			}
		})
	}
}

const ioTimeout = 10 * time.Second

var listeningRE = regexp.MustCompile(`msg="SOCKS server listening" addr=(\S+)`)

// startCommand runs 'tunsocks server args...' and returns the address it
// listens on, a stop func that cancels it (like SIGTERM) and returns the
// exit code, and its stderr.
func startCommand(t *testing.T, args ...string) (string, func() int, *testenv.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testenv.Buffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, append([]string{"tunsocks", "server"}, args...), &stdout, &stderr) }()
	stop := func() int { cancel(); return <-code }
	for i := 0; i < 500; i++ {
		if m := listeningRE.FindStringSubmatch(stderr.String()); m != nil {
			return m[1], stop, &stderr
		}
		select {
		case c := <-code:
			t.Fatalf("exited with %d before listening:\n%s", c, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	t.Fatalf("no listening line:\n%s", stderr.String())
	return "", nil, nil
}

func TestServerCommandServesAndStops(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()

	addr, stop, stderr := startCommand(t, "--listen", "127.0.0.1:0", "--user", "alice:s3cret", "--grace", "100ms", "--allow-loopback")
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	ta := echo.Addr().(*net.TCPAddr)
	msg := []byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 6, 's', '3', 'c', 'r', 'e', 't', 5, 1, 0, 1}
	msg = append(msg, ta.IP.To4()...)
	msg = append(msg, byte(ta.Port>>8), byte(ta.Port), 'h', 'i')
	c.Write(msg)
	want := []byte{5, 2, 1, 0, 5, 0, 0, 1}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("handshake: %x, %v", got, err)
	}
	io.ReadFull(c, make([]byte, 6)) // bound address
	echoed := make([]byte, 2)
	if _, err := io.ReadFull(c, echoed); err != nil || string(echoed) != "hi" {
		t.Fatalf("echo %q, %v", echoed, err)
	}
	// The open relay outlives the signal by --grace, then is closed.
	if code := stop(); code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("relay after shutdown: %v", err)
	}
	for _, want := range []string{"shutting down", "stopped", "msg=request"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}
}

func TestServerCommandOpen(t *testing.T) {
	_, stop, stderr := startCommand(t, "--listen", "0.0.0.0:0", "--open")
	if code := stop(); code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	_, stop, stderr = startCommand(t, "--listen", "0.0.0.0:0", "--user", "u:p")
	if code := stop(); code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
}

func TestServerCommandRefusesLoopback(t *testing.T) {
	// An open server refuses 127.0.0.1 targets and CONNECTs to itself
	// (reply 0x02) unless --allow-loopback.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	addr, stop, stderr := startCommand(t, "--listen", "127.0.0.1:0", "--open")
	defer stop()
	connect := func(target netip.AddrPort) byte {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		ip := target.Addr().As4()
		msg := append([]byte{5, 1, 0, 5, 1, 0, 1}, ip[:]...)
		c.Write(append(msg, byte(target.Port()>>8), byte(target.Port())))
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || got[0] != 5 || got[1] != 0 {
			t.Fatalf("reply %x, %v\n%s", got, err, stderr)
		}
		return got[3]
	}
	for _, target := range []string{echo.Addr().String(), addr} {
		if rep := connect(netip.MustParseAddrPort(target)); rep != 0x02 {
			t.Errorf("CONNECT %s: reply 0x%02x, want 0x02 (not allowed)", target, rep)
		}
	}
	if !strings.Contains(stderr.String(), "the server's own host") {
		t.Errorf("the log does not say why:\n%s", stderr)
	}
}
