package procinfo

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func self(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return exe
}

func addrPort(t testing.TB, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func checkSelf(t *testing.T, f *Finder, network string, src netip.AddrPort) {
	t.Helper()
	path, uid, err := f.Lookup(network, src)
	if err != nil {
		t.Fatalf("Lookup(%s, %s): %v", network, src, err)
	}
	if want := self(t); path != want {
		t.Errorf("Lookup(%s, %s) path = %q, want %q", network, src, path, want)
	}
	if uid != os.Getuid() {
		t.Errorf("Lookup(%s, %s) uid = %d, want %d", network, src, uid, os.Getuid())
	}
}

func TestLookupTCP(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := NewFinder(0)
	checkSelf(t, f, "tcp", addrPort(t, c.LocalAddr())) // the dialer's ephemeral port
	checkSelf(t, f, "tcp", addrPort(t, ln.Addr()))     // the listener (and accepted socket)
	checkSelf(t, f, "tcp4", addrPort(t, c.LocalAddr()))
	// The same port over UDP belongs to nobody.
	if _, _, err := f.Lookup("udp", addrPort(t, c.LocalAddr())); !errors.Is(err, ErrNotFound) {
		t.Errorf("udp lookup of a tcp-only port: %v", err)
	}
}

func TestLookupUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	checkSelf(t, NewFinder(0), "udp", addrPort(t, pc.LocalAddr()))

	// A socket bound to 0.0.0.0 owns flows from any local address.
	wild, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	port := addrPort(t, wild.LocalAddr()).Port()
	checkSelf(t, NewFinder(0), "udp", netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port))
}

func haveIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
}

func TestLookupIPv6(t *testing.T) {
	haveIPv6(t)
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp6", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkSelf(t, NewFinder(0), "tcp", addrPort(t, c.LocalAddr()))
}

func TestLookupDualStack(t *testing.T) {
	haveIPv6(t)
	// A dual-stack listener on [::] accepts an IPv4 connection on an
	// AF_INET6 socket whose local address is ::ffff:127.0.0.1.
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := addrPort(t, ln.Addr()).Port()
	v4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	c, err := net.Dial("tcp4", v4.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if la := s.LocalAddr().String(); !strings.Contains(la, "127.0.0.1") {
		t.Logf("accepted socket local address %s", la)
	}
	checkSelf(t, NewFinder(0), "tcp", v4)
	// The mapped form of the address is treated as IPv4.
	checkSelf(t, NewFinder(0), "tcp", netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), port))

	// A dual-stack UDP socket on [::] owns IPv4 flows to its port.
	pc, err := net.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	checkSelf(t, NewFinder(0), "udp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addrPort(t, pc.LocalAddr()).Port()))
}

func freePort(t *testing.T, network string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := addrPort(t, pc.LocalAddr())
	pc.Close()
	return ap
}

func TestLookupNotFound(t *testing.T) {
	f := NewFinder(time.Minute)
	ap := freePort(t, "udp4")
	_, uid, err := f.Lookup("udp", ap)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup of a closed port: %v, want ErrNotFound", err)
	}
	if uid != -1 {
		t.Errorf("uid = %d, want -1", uid)
	}
	if want := "procinfo: lookup udp " + ap.String() + ": no local socket owns the address"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// Not found is not cached: a socket bound afterwards is found.
	pc, err := net.ListenPacket("udp4", ap.String())
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", ap, err)
	}
	defer pc.Close()
	checkSelf(t, f, "udp", ap)
}

func TestLookupBadInput(t *testing.T) {
	f := NewFinder(time.Second)
	if _, _, err := f.Lookup("icmp", netip.MustParseAddrPort("127.0.0.1:1")); err == nil || !strings.Contains(err.Error(), `unsupported network "icmp"`) {
		t.Errorf("icmp: %v", err)
	}
	if _, _, err := f.Lookup("tcp", netip.AddrPort{}); err == nil || !strings.Contains(err.Error(), "invalid source address") {
		t.Errorf("invalid addr: %v", err)
	}
}

func TestCache(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := addrPort(t, pc.LocalAddr())
	now := time.Unix(1000, 0)
	f := NewFinder(2 * time.Second)
	f.now = func() time.Time { return now }
	checkSelf(t, f, "udp", ap)
	pc.Close()
	// Within the TTL the answer comes from the cache although the socket is gone.
	checkSelf(t, f, "udp", ap)
	now = now.Add(3 * time.Second)
	if _, _, err := f.Lookup("udp", ap); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after TTL: %v, want ErrNotFound", err)
	}
}

func TestCacheBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	f := NewFinder(time.Hour)
	f.now = func() time.Time { return now }
	for i := range 3 * maxCache {
		f.cache.Put(cacheKey{"tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(i))}, cacheEntry{}, now.Add(time.Hour))
		if f.cache.Len() > maxCache {
			t.Fatalf("cache holds %d > %d", f.cache.Len(), maxCache)
		}
	}
}

func TestInodeCacheRevalidated(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := NewFinder(0)
	checkSelf(t, f, "tcp", addrPort(t, ln.Addr()))
	// Poison the inode cache: a wrong fd must be detected and rescanned.
	f.sys.mu.Lock()
	for k := range f.sys.inodes {
		f.sys.inodes[k] = pidFD{pid: "1", fd: "999999"}
	}
	f.sys.mu.Unlock()
	checkSelf(t, f, "tcp", addrPort(t, ln.Addr()))
}

func BenchmarkLookup(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ap := addrPort(b, c.LocalAddr())
	b.Run("uncached", func(b *testing.B) {
		f := NewFinder(0)
		for b.Loop() {
			if _, _, err := f.Lookup("tcp", ap); err != nil {
				b.Fatal(err)
			}
		}
	})
	dst := addrPort(b, c.RemoteAddr())
	b.Run("flow-uncached", func(b *testing.B) {
		f := NewFinder(0)
		for b.Loop() {
			if _, _, err := f.LookupFlow("tcp", ap, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cold-proc-scan", func(b *testing.B) {
		for b.Loop() {
			f := NewFinder(0) // empty inode cache: every lookup scans /proc
			if _, _, err := f.Lookup("tcp", ap); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		f := NewFinder(time.Minute)
		for b.Loop() {
			if _, _, err := f.Lookup("tcp", ap); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestDiagDumpFiltersInKernel checks that the bytecode filter keeps only
// sockets on the asked port (findSocket checks again, so this is the only
// place a broken filter would show).
func TestDiagDumpFiltersInKernel(t *testing.T) {
	var lns []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns = append(lns, ln)
	}
	port := addrPort(t, lns[1].Addr()).Port()
	socks, err := diagDump(unix.AF_INET, unix.IPPROTO_TCP, port)
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 1 {
		t.Fatalf("dump for port %d returned %d sockets: %+v", port, len(socks), socks)
	}
	if s := socks[0]; s.port != port || s.state != tcpListen || s.local != netip.MustParseAddr("127.0.0.1") || s.inode == 0 {
		t.Errorf("socket %+v", s)
	}
}

// TestHelperProcess is not a test: it is the other process of
// TestLookupOtherProcess. It binds a UDP socket, prints its address and
// waits for stdin to close.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("PROCINFO_HELPER") != "1" {
		t.Skip("helper process only")
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		os.Exit(2)
	}
	os.Stdout.WriteString(pc.LocalAddr().String() + "\n")
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// TestLookupOtherProcess finds a socket held by a child process running a
// copy of this binary under another name (and, when root, another uid).
func TestLookupOtherProcess(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // let the helper's uid reach its binary
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "procinfo-helper")
	data, err := os.ReadFile(self(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "PROCINFO_HELPER=1")
	wantUID := os.Getuid()
	if wantUID == 0 {
		wantUID = 65534
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(wantUID), Gid: 65534}}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper printed no address: %v", err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("helper printed %q: %v", line, err)
	}
	path, uid, err := NewFinder(0).Lookup("udp", ap)
	if err != nil {
		t.Fatalf("Lookup(udp, %s): %v", ap, err)
	}
	if path != exe || uid != wantUID {
		t.Errorf("Lookup = %q, %d; want %q, %d", path, uid, exe, wantUID)
	}
}

func TestLookupFlow(t *testing.T) {
	c, _ := testenv.TCPPair(t)
	src, dst := addrPort(t, c.LocalAddr()), addrPort(t, c.RemoteAddr())

	// The exact request finds the connection itself.
	sk, err := diagExact(unix.AF_INET, unix.IPPROTO_TCP, src, dst)
	if err != nil {
		t.Fatalf("diagExact: %v", err)
	}
	if sk.port != src.Port() || sk.local != src.Addr() || sk.inode == 0 || sk.state == tcpListen {
		t.Errorf("diagExact found %+v", sk)
	}
	path, uid, err := NewFinder(0).LookupFlow("tcp", src, dst)
	if err != nil || path != self(t) || uid != os.Getuid() {
		t.Errorf("LookupFlow = %q, %d, %v", path, uid, err)
	}
	// A wrong destination falls back to the port search.
	bogus := netip.MustParseAddrPort("127.0.0.1:1")
	if _, err := diagExact(unix.AF_INET, unix.IPPROTO_TCP, src, bogus); !errors.Is(err, ErrNotFound) {
		t.Errorf("diagExact with a wrong dst: %v, want ErrNotFound", err)
	}
	checkSelfFlow(t, "tcp", src, bogus)
	// UDP ignores dst.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	checkSelfFlow(t, "udp", addrPort(t, pc.LocalAddr()), bogus)
	// Nobody owns it.
	free := freePort(t, "udp4")
	if _, _, err := NewFinder(0).LookupFlow("tcp", free, dst); !errors.Is(err, ErrNotFound) {
		t.Errorf("LookupFlow of a free port: %v, want ErrNotFound", err)
	}
}

func TestLookupFlowDualStack(t *testing.T) {
	haveIPv6(t)
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := addrPort(t, ln.Addr()).Port()
	c, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The accepted socket is AF_INET6 with local ::ffff:127.0.0.1:port; an
	// IPv4 flow description finds it with the exact request.
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	remote := addrPort(t, c.LocalAddr())
	sk, err := diagExact(unix.AF_INET, unix.IPPROTO_TCP, local, remote)
	if err != nil {
		t.Fatalf("diagExact: %v", err)
	}
	if sk.family != unix.AF_INET6 || sk.state == tcpListen {
		t.Errorf("expected the accepted dual-stack socket, got %+v", sk)
	}
	checkSelfFlow(t, "tcp", local, remote)
}

func checkSelfFlow(t *testing.T, network string, src, dst netip.AddrPort) {
	t.Helper()
	path, uid, err := NewFinder(0).LookupFlow(network, src, dst)
	if err != nil || path != self(t) || uid != os.Getuid() {
		t.Errorf("LookupFlow(%s, %s, %s) = %q, %d, %v; want %q, %d", network, src, dst, path, uid, err, self(t), os.Getuid())
	}
}

// TestDiagDumpManySockets reads a dump that spans several datagrams.
func TestDiagDumpManySockets(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 300
	for range n {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	socks, err := diagDump(unix.AF_INET, unix.IPPROTO_TCP, addrPort(t, ln.Addr()).Port())
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != n+1 { // the listener and every accepted socket
		t.Fatalf("dump returned %d sockets, want %d", len(socks), n+1)
	}
}

// TestOwnerOfListener: Owner names the pid, uid and executable holding a
// listening socket (what auto-route asks about a loopback upstream), and
// says so when nothing listens.
func TestOwnerOfListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := NewFinder(0)
	o, err := f.Owner("tcp", addrPort(t, ln.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	if o.PID != os.Getpid() || o.UID != os.Geteuid() || o.Path != self(t) {
		t.Errorf("Owner = %+v, want pid %d uid %d %s", o, os.Getpid(), os.Geteuid(), self(t))
	}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	free := addrPort(t, ln2.Addr())
	ln2.Close()
	if _, err := f.Owner("tcp", free); !errors.Is(err, ErrNotFound) {
		t.Errorf("Owner of a port nobody holds: %v, want ErrNotFound", err)
	}
}
