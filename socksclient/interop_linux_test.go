package socksclient

// Interop tests: our client against real SOCKS servers (Dante's danted and
// microsocks) that each test starts on a free loopback port and kills
// afterwards. A missing server binary skips loudly, and fails under CI=true
// (CI installs the Debian packages dante-server and microsocks).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// startPeer starts a server in its own process group, waits until it
// accepts on addr and kills the group (the process and any children it
// forked) when the test ends.
func startPeer(t testing.TB, addr, path string, args ...string) {
	t.Helper()
	out := &testenv.Buffer{Max: 1 << 20} // a peer's output, for failure messages
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL) // the group we created: pid and its children
		testenv.Recv(t, exited, "the peer's exit")
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), out)
		}
	})
	// Wait until it accepts: at most 500 tries of at most 20 ms each.
	for i := 0; i < 500; i++ {
		select {
		case <-exited:
			t.Fatalf("%s exited early: %s\n%s", path, cmd.ProcessState, out)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s does not accept on %s\n%s", path, addr, out)
}

// danted starts Dante on a free loopback port. method is "none" or
// "username".
func danted(t testing.TB, method string) string {
	t.Helper()
	path := testenv.NeedTool(t, "danted", "dante-server")
	testenv.NeedRoot(t, "danted switches to user nobody and checks passwords in /etc/shadow")
	port := freePort(t)
	dir := t.TempDir()
	conf := fmt.Sprintf(`logoutput: stderr
internal: 127.0.0.1 port = %d
external: lo
socksmethod: %s
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
	from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
	from: 127.0.0.0/8 to: 127.0.0.0/8
	command: bind connect udpassociate bindreply udpreply
}
`, port, method)
	cf := filepath.Join(dir, "danted.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	startPeer(t, addr, path, "-f", cf, "-p", filepath.Join(dir, "danted.pid"), "-N", "1")
	return addr
}

func TestDanteNoAuth(t *testing.T) {
	proxy := danted(t, "none")
	echoAddr, uecho := testenv.TCPEcho(t, "tcp", "127.0.0.1:0"), testenv.UDPEcho(t)
	c, err := Parse("socks5://"+proxy, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("connect", func(t *testing.T) { checkConnect(t, c, echoAddr, true) })
	t.Run("udp", func(t *testing.T) { checkUDP(t, c, uecho, 1, 512, 1400, 8000) })
	t.Run("socks4", func(t *testing.T) {
		c4, _ := Parse("socks4://nobody@"+proxy, nil)
		checkConnect(t, c4, echoAddr, true)
	})
	// Dante 1.4 has no SOCKS4a: it takes 0.0.0.1 as a literal address and
	// refuses it (0x5b). SOCKS4a names are covered by the fake-server tests.
	t.Run("socks5 name", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(echoAddr)
		checkConnect(t, c, "localhost:"+port, true)
	})
	t.Run("refused", func(t *testing.T) {
		closed := testenv.ClosedPort(t).String()
		_, err := c.DialContext(context.Background(), "tcp", closed)
		var re *socks.ReplyError
		if !errors.As(err, &re) {
			t.Fatalf("CONNECT to a closed port: %v, want a *socks.ReplyError", err)
		}
		t.Logf("dante answers a closed port with %v", re)
	})
	t.Run("bind", func(t *testing.T) { checkBind(t, c) })
}

func TestDanteUsername(t *testing.T) {
	proxy := danted(t, "username")
	user, pass := testenv.SystemUser(t)
	echoAddr, uecho := testenv.TCPEcho(t, "tcp", "127.0.0.1:0"), testenv.UDPEcho(t)
	c, err := Parse(fmt.Sprintf("socks5://%s:%s@%s", user, pass, proxy), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("connect", func(t *testing.T) { checkConnect(t, c, echoAddr, true) })
	t.Run("udp", func(t *testing.T) { checkUDP(t, c, uecho, 1, 1400) })
	t.Run("wrong password", func(t *testing.T) {
		bad, _ := Parse(fmt.Sprintf("socks5://%s:wrong@%s", user, proxy), nil)
		_, err := bad.DialContext(context.Background(), "tcp", echoAddr)
		if !errors.Is(err, ErrAuthFailed) {
			t.Errorf("err = %v, want ErrAuthFailed", err)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		anon, _ := Parse("socks5://"+proxy, nil)
		_, err := anon.DialContext(context.Background(), "tcp", echoAddr)
		if !errors.Is(err, ErrNoAcceptableMethod) {
			t.Errorf("err = %v, want ErrNoAcceptableMethod", err)
		}
	})
}

func microsocks(t testing.TB, args ...string) string {
	t.Helper()
	path := testenv.NeedTool(t, "microsocks", "microsocks")
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	startPeer(t, addr, path, append([]string{"-i", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)...)
	return addr
}

func TestMicrosocks(t *testing.T) {
	proxy := microsocks(t)
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	c, _ := Parse("socks5://"+proxy, nil)
	checkConnect(t, c, echoAddr, false)
	// microsocks resolves names itself: "localhost" goes as a name.
	_, port, _ := net.SplitHostPort(echoAddr)
	checkConnect(t, c, "localhost:"+port, false)
	// It has no UDP ASSOCIATE and says so with reply 0x07.
	if _, err := c.ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) {
		t.Errorf("ListenPacket: %v, want ErrUDPUnsupported", err)
	}
}

func TestMicrosocksAuth(t *testing.T) {
	proxy := microsocks(t, "-u", "alice", "-P", "s3cret")
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	c, _ := Parse("socks5://alice:s3cret@"+proxy, nil)
	checkConnect(t, c, echoAddr, false)
	bad, _ := Parse("socks5://alice:wrong@"+proxy, nil)
	if _, err := bad.DialContext(context.Background(), "tcp", echoAddr); !errors.Is(err, ErrAuthFailed) {
		t.Errorf("wrong password: %v, want ErrAuthFailed", err)
	}
}

// TestChainMicrosocksDante: client -> microsocks -> danted -> echo.
func TestChainMicrosocksDante(t *testing.T) {
	first := microsocks(t)
	second := danted(t, "none")
	echoAddr := testenv.TCPEcho(t, "tcp", "127.0.0.1:0")
	c, err := chain(nil, testenv.MustURL(t, "socks5://"+first), testenv.MustURL(t, "socks5://"+second))
	if err != nil {
		t.Fatal(err)
	}
	checkConnect(t, c, echoAddr, false)
	// Two microsocks hops, one with auth.
	third := microsocks(t, "-u", "bob", "-P", "pw")
	c, err = chain(nil, testenv.MustURL(t, "socks5://"+first), testenv.MustURL(t, "socks5://bob:pw@"+third))
	if err != nil {
		t.Fatal(err)
	}
	checkConnect(t, c, echoAddr, false)
}

// BenchmarkConnectMicrosocks measures one CONNECT (TCP to the proxy, method
// negotiation, request, the proxy's own connect to the echo, reply) and one
// echoed byte, on loopback.
func BenchmarkConnectMicrosocks(b *testing.B) { benchConnect(b, microsocks(b)) }
