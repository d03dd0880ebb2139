package direct

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestDialPlain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := (&Dialer{}).DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestMarkIsSet(t *testing.T) {
	testenv.NeedRoot(t, "SO_MARK and network namespaces")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := (&Dialer{Mark: 0x7475}).DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	var mark int
	var gerr error
	raw.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || mark != 0x7475 {
		t.Fatalf("SO_MARK = %#x, %v; want 0x7475", mark, gerr)
	}
}

func TestNetnsSockets(t *testing.T) {
	testenv.NeedRoot(t, "SO_MARK and network namespaces")
	name := "tsk-direct-test-" + time.Now().Format("150405.000")
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(name)
	d := &Dialer{Netns: name, Timeout: 2 * time.Second}
	// A listener here is not reachable from the new namespace, whose
	// loopback is another (and down) device: the dial must fail, proving the
	// socket was made there and not in our namespace.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err := (&Dialer{}).DialContext(context.Background(), "tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err == nil {
		c.Close()
		t.Fatal("a dial in the new namespace reached a listener in ours")
	}
	pc, err := d.ListenPacket(context.Background(), "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}

// TestResolverSocketsAreMarked: with a mark, names are resolved over
// sockets carrying it too, so with --auto-route the lookup of an
// upstream's name does not enter the TUN.
func TestResolverSocketsAreMarked(t *testing.T) {
	testenv.NeedRoot(t, "SO_MARK")
	d := &Dialer{Mark: 0x7476}
	r := d.resolver()
	if r == nil || !r.PreferGo || r.Dial == nil {
		t.Fatalf("resolver of a marked dialer: %+v, want Go's resolver dialing marked sockets", r)
	}
	pc := testenv.UDPEcho(t)
	c, err := r.Dial(context.Background(), "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(*net.UDPConn).SyscallConn()
	var mark int
	var gerr error
	raw.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || mark != 0x7476 {
		t.Fatalf("resolver socket SO_MARK = %#x, %v; want 0x7476", mark, gerr)
	}
	if (&Dialer{}).resolver() != nil {
		t.Error("an unmarked dialer should use the system's resolver as configured")
	}
}

// TestPinnedHosts: a pinned name is dialed at its pinned addresses (the
// first that answers), never resolved.
func TestPinnedHosts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	// Nothing listens on 127.0.0.2 (the listener is bound to 127.0.0.1):
	// the first pinned address is refused, the second answers.
	d := &Dialer{Timeout: 2 * time.Second, Hosts: map[string][]netip.Addr{"proxy.invalid": {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}}}
	c, err := d.DialContext(context.Background(), "tcp", "proxy.invalid:"+port)
	if err != nil {
		t.Fatalf("dial a pinned name: %v", err)
	}
	c.Close()
}

func TestDialContextChecked(t *testing.T) {
	// The check sees the resolved address ("localhost" -> a loopback IP)
	// and its error fails the dial before any connection is made.
	var accepted atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	errNo := errors.New("no loopback")
	var seen []netip.AddrPort
	check := func(ap netip.AddrPort) error {
		seen = append(seen, ap)
		if ap.Addr().Unmap().IsLoopback() {
			return errNo
		}
		return nil
	}
	_, err = (&Dialer{}).DialContextChecked(context.Background(), "tcp4", net.JoinHostPort("localhost", strconv.Itoa(port)), check)
	if !errors.Is(err, errNo) {
		t.Fatalf("dial error = %v, want the check's error", err)
	}
	if len(seen) == 0 || !seen[0].Addr().IsLoopback() || seen[0].Port() != uint16(port) {
		t.Errorf("check saw %v, want 127.0.0.1:%d", seen, port)
	}
	// A pinned name's addresses are checked too.
	pinned := &Dialer{Hosts: map[string][]netip.Addr{"pinned.test": {netip.MustParseAddr("127.0.0.1")}}}
	if _, err := pinned.DialContextChecked(context.Background(), "tcp", net.JoinHostPort("pinned.test", strconv.Itoa(port)), check); !errors.Is(err, errNo) {
		t.Fatalf("pinned dial error = %v, want the check's error", err)
	}
	c, err := (&Dialer{}).DialContextChecked(context.Background(), "tcp", ln.Addr().String(), func(netip.AddrPort) error { return nil })
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
	// Only the allowed dial connected: had the refused one connected, it
	// would have been accepted first.
	for i := 0; i < 500 && accepted.Load() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 1 {
		t.Errorf("listener accepted %d connections, want 1 (the refused dial must not connect)", n)
	}
}
