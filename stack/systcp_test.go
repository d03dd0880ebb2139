package stack

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// testSys is a sysTCP without listeners: held SYNs are recorded, and
// packets it writes itself are kept.
type testSys struct {
	*sysTCP
	mu      sync.Mutex
	started []*natEntry
	written [][]byte
}

type recordDevice struct {
	Device
	write func([]byte)
}

func (d recordDevice) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		d.write(append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

func newTestSys(t *testing.T, selves ...netip.Addr) *testSys {
	ts := &testSys{}
	ts.sysTCP = &sysTCP{
		cfg:    SystemTCP{},
		byApp:  map[[2]netip.AddrPort]*natEntry{},
		byFake: map[netip.AddrPort]*natEntry{},
		log:    slog.New(slog.DiscardHandler),
		start: func(e *natEntry, _, _ netip.AddrPort) {
			ts.mu.Lock()
			ts.started = append(ts.started, e)
			ts.mu.Unlock()
		},
		link: &linkEndpoint{dev: recordDevice{write: func(b []byte) {
			ts.mu.Lock()
			ts.written = append(ts.written, b)
			ts.mu.Unlock()
		}}},
	}
	for _, a := range selves {
		ts.fams = append(ts.fams, newSysFamily(a, 40000, nil))
	}
	return ts
}

// accepted moves e to established, as the listener's accept would.
func (ts *testSys) accepted(e *natEntry) {
	ts.mu.Lock()
	e.state = natEstablished
	ts.mu.Unlock()
}

func TestSystemTCPTranslation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		self, dst string
	}{
		{"IPv4", "198.18.0.1", "10.202.0.2"},
		{"IPv6", "fc00::1", "fd02::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self := netip.MustParseAddr(tc.self)
			ts := newTestSys(t, self)
			app := netip.AddrPortFrom(self, 51000)
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.dst), 80)
			listener := netip.AddrPortFrom(self, 40000)

			// The SYN is held for the Handler, not written back.
			syn := tcpSeg(t, app, dst, 1000, 0, true, false, false, false, "")
			if mine, write := ts.divert(syn); !mine || write {
				t.Fatalf("SYN: mine=%v write=%v, want held", mine, write)
			}
			if len(ts.started) != 1 {
				t.Fatalf("%d requests started, want 1", len(ts.started))
			}
			e := ts.started[0]
			if !ts.fams[0].isFake(e.fake.Addr()) || e.app != [2]netip.AddrPort{app, dst} {
				t.Fatalf("entry %+v", e)
			}
			beyond := self
			for range fakePeers + 1 {
				beyond = beyond.Next()
			}
			if ts.fams[0].isFake(self) || ts.fams[0].isFake(beyond) || ts.fams[0].isFake(dst.Addr()) {
				t.Errorf("isFake takes the TUN address, the address after the fake peers or the destination")
			}
			// A retransmission while the Handler decides changes nothing.
			if mine, write := ts.divert(tcpSeg(t, app, dst, 1000, 0, true, false, false, false, "")); !mine || write || len(ts.started) != 1 {
				t.Fatalf("retransmitted SYN: mine=%v write=%v started=%d", mine, write, len(ts.started))
			}
			ts.accepted(e)

			// App -> listener: from the fake peer, to the listener.
			data := tcpSeg(t, app, dst, 1001, 5000, false, true, false, false, "hello")
			if mine, write := ts.divert(data); !mine || !write {
				t.Fatalf("data: mine=%v write=%v", mine, write)
			}
			if p := checkPacket(t, data); p.src != e.fake || p.dst != listener {
				t.Errorf("app packet became %v -> %v, want %v -> %v", p.src, p.dst, e.fake, listener)
			}
			// Listener -> app: from the destination, to the app.
			reply := tcpSeg(t, listener, e.fake, 5000, 1006, false, true, false, false, "world")
			if mine, write := ts.divert(reply); !mine || !write {
				t.Fatalf("reply: mine=%v write=%v", mine, write)
			}
			if p := checkPacket(t, reply); p.src != dst || p.dst != app {
				t.Errorf("listener packet became %v -> %v, want %v -> %v", p.src, p.dst, dst, app)
			}

			// The app reuses the pair for a new connection (new ISN): a new
			// request with a new fake peer; the old one's translation stays.
			ts.closed(e)
			if mine, write := ts.divert(tcpSeg(t, app, dst, 9000, 0, true, false, false, false, "")); !mine || write || len(ts.started) != 2 {
				t.Fatalf("reused pair: mine=%v write=%v started=%d", mine, write, len(ts.started))
			}
			if e2 := ts.started[1]; e2.fake == e.fake || ts.byFake[e.fake] != e {
				t.Errorf("new connection got fake %v (old %v), old translation kept: %v", e2.fake, e.fake, ts.byFake[e.fake] == e)
			}

			// Not TCP for us: other destinations' UDP, a packet from elsewhere.
			if mine, _ := ts.divert([]byte{0x45, 0, 0, 20}); mine {
				t.Error("a truncated packet was taken")
			}
		})
	}
}

func TestSystemTCPResets(t *testing.T) {
	self := netip.MustParseAddr("198.18.0.1")
	app := netip.AddrPortFrom(self, 51000)
	dst := netip.MustParseAddrPort("10.202.0.2:9")

	t.Run("rejected SYN", func(t *testing.T) {
		ts := newTestSys(t, self)
		ts.divert(tcpSeg(t, app, dst, 1000, 0, true, false, false, false, ""))
		ts.reject(ts.started[0])
		if len(ts.written) != 1 {
			t.Fatalf("%d packets written, want one RST", len(ts.written))
		}
		rst := ts.written[0]
		p := checkPacket(t, rst)
		seg := header.TCP(rst[p.ihl:])
		if p.src != dst || p.dst != app || seg.Flags() != header.TCPFlagRst|header.TCPFlagAck || seg.AckNumber() != 1001 {
			t.Errorf("RST %v -> %v flags %v ack %d, want %v -> %v RST|ACK ack 1001", p.src, p.dst, seg.Flags(), seg.AckNumber(), dst, app)
		}
		if len(ts.byApp) != 0 || len(ts.byFake) != 0 {
			t.Error("a rejected connection kept its translation")
		}
	})
	t.Run("unknown connection", func(t *testing.T) {
		// A segment of a connection the stack does not know (expired)
		// gets a RST carrying its acknowledgement number as sequence.
		ts := newTestSys(t, self)
		if mine, write := ts.divert(tcpSeg(t, app, dst, 1000, 777, false, true, false, false, "late")); !mine || write {
			t.Fatalf("mine=%v write=%v", mine, write)
		}
		if len(ts.written) != 1 {
			t.Fatalf("%d packets written, want one RST", len(ts.written))
		}
		p := checkPacket(t, ts.written[0])
		seg := header.TCP(ts.written[0][p.ihl:])
		if seg.Flags() != header.TCPFlagRst || seg.SequenceNumber() != 777 {
			t.Errorf("RST flags %v seq %d, want RST seq 777", seg.Flags(), seg.SequenceNumber())
		}
		// ... but a RST is never answered.
		ts.divert(tcpSeg(t, app, dst, 1000, 0, false, false, false, true, ""))
		if len(ts.written) != 1 {
			t.Error("a RST was answered")
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		self6 := netip.MustParseAddr("fc00::1")
		ts := newTestSys(t, self6)
		app6, dst6 := netip.AddrPortFrom(self6, 51000), netip.MustParseAddrPort("[fd02::2]:9")
		ts.divert(tcpSeg(t, app6, dst6, 1000, 0, true, false, false, false, ""))
		ts.reject(ts.started[0])
		if p := checkPacket(t, ts.written[0]); p.src != dst6 || p.dst != app6 {
			t.Errorf("RST %v -> %v", p.src, p.dst)
		}
	})
}

func TestSystemTCPNeedsRoomForFakePeers(t *testing.T) {
	s := &Stack{log: slog.New(slog.DiscardHandler)}
	_, err := newSysTCP(t.Context(), s, SystemTCP{Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/30")},
		Listen: func(string, string) (net.Listener, error) { t.Fatal("listened"); return nil, nil }})
	if err == nil {
		t.Fatal("a /30 was accepted")
	}
}

// TestSystemTCPInnerLeg: what Config.Tap leaves out is exactly the
// packets to and from a kernel listener.
func TestSystemTCPInnerLeg(t *testing.T) {
	self, self6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fc00::1")
	ts := newTestSys(t, self, self6)
	listener := netip.AddrPortFrom(self, 40000)
	fake := netip.MustParseAddrPort("198.18.0.7:5000")
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		want     bool
	}{
		{"fake peer to listener", fake, listener, true},
		{"listener to fake peer", listener, fake, true},
		{"IPv6 listener", netip.AddrPortFrom(self6, 40000), netip.MustParseAddrPort("[fc00::9]:1"), true},
		{"app to remote", netip.AddrPortFrom(self, 51000), netip.MustParseAddrPort("10.202.0.2:80"), false},
		// A fake-IP DNS address can fall among the fake peers; the app's
		// traffic to it is still the app's.
		{"app to a fake IP next to the TUN address", netip.AddrPortFrom(self, 51000), netip.MustParseAddrPort("198.18.0.7:443"), false},
		{"same port, other address", netip.MustParseAddrPort("198.18.0.9:40000"), fake, false},
	} {
		pkt := tcpSeg(t, tc.src, tc.dst, 1, 0, true, false, false, false, "")
		if got := ts.inner(pkt); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSystemTCPSelfTestPackets(t *testing.T) {
	self := netip.MustParseAddr("198.18.0.1")
	ts := newTestSys(t, self)
	f := ts.fams[0]
	fake := netip.AddrPortFrom(f.fakes[len(f.fakes)-1], 1)
	listener := netip.AddrPortFrom(self, f.lport)

	syn := segment(fake, listener, 1234, 0, tcpSYN, 65535)
	p := checkPacket(t, syn)
	if p.src != fake || p.dst != listener || p.flags != tcpSYN || p.seq() != 1234 {
		t.Fatalf("probe SYN %v -> %v flags %#x seq %d", p.src, p.dst, p.flags, p.seq())
	}
	// The listener's answer to the probe is taken, signalled, not written.
	e := &natEntry{probe: make(chan struct{}, 1), fake: fake}
	ts.byFake[fake] = e
	synAck := tcpSeg(t, listener, fake, 99, 1235, true, true, false, false, "")
	if mine, write := ts.divert(synAck); !mine || write {
		t.Fatalf("probe answer: mine=%v write=%v", mine, write)
	}
	select {
	case <-e.probe:
	default:
		t.Fatal("probe not signalled")
	}
	// Switched off, the stack leaves every packet to gVisor.
	f.off.Store(true)
	if mine, _ := ts.divert(tcpSeg(t, netip.AddrPortFrom(self, 5), netip.MustParseAddrPort("10.0.0.1:80"), 1, 0, true, false, false, false, "")); mine {
		t.Error("a switched-off system stack took a packet")
	}
	if v6 := segment(netip.MustParseAddrPort("[fc00::ff]:1"), netip.MustParseAddrPort("[fc00::1]:4000"), 7, 0, tcpSYN, 65535); checkPacket(t, v6).v6 != true {
		t.Error("IPv6 probe SYN not IPv6")
	}
}

// TestSystemTCPSweepShrinksTables: once the translations of a burst of
// short connections expire, the tables are made anew: the room the maps
// grew to goes back to the heap (a Go map never shrinks), and the live
// translations stay.
func TestSystemTCPSweepShrinksTables(t *testing.T) {
	const n = 20000
	tb := &sysTCP{byApp: map[[2]netip.AddrPort]*natEntry{}, byFake: map[netip.AddrPort]*natEntry{}}
	now := time.Now()
	keep := make([]*natEntry, 0, n+3) // the entries outlive the sweep: only the maps' room can go
	for i := range n + 3 {
		e := &natEntry{
			app:      [2]netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 40000), netip.MustParseAddrPort("192.0.2.1:80")},
			fake:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 1024),
			state:    natClosed,
			closedAt: now.Add(-2 * natGrace),
		}
		if i >= n {
			e.state = natEstablished
		}
		keep = append(keep, e)
		tb.byApp[e.app] = e
		tb.byFake[e.fake] = e
		tb.peak = max(tb.peak, len(tb.byFake))
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	tb.sweepOnce(now)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if freed := int64(before) - int64(ms.HeapAlloc); freed < 1<<20 {
		t.Errorf("the sweep of %d expired translations freed %d bytes of the tables, want over 1 MiB", n, freed)
	}
	if len(tb.byApp) != 3 || len(tb.byFake) != 3 {
		t.Fatalf("%d/%d translations left, want the 3 live ones", len(tb.byApp), len(tb.byFake))
	}
	for _, e := range keep[n:] {
		if tb.byApp[e.app] != e || tb.byFake[e.fake] != e {
			t.Errorf("live translation %v lost", e.app)
		}
	}
	if tb.peak != 3 {
		t.Errorf("peak %d after the tables were made anew, want 3", tb.peak)
	}
	runtime.KeepAlive(keep)
}

// rejectAll is a Handler that refuses every flow.
type rejectAll struct{}

func (rejectAll) HandleTCP(_ context.Context, r *TCPRequest) { r.Reject() }
func (rejectAll) HandleUDP(_ context.Context, f *UDPFlow)    { f.Close() }

// TestSystemTCPSelfTestPerFamily: when the kernel answers the probe of
// the IPv4 listener but not that of the IPv6 one (a firewall dropping new
// inbound TCP over IPv6 only), only IPv6's TCP goes through gVisor: IPv4's
// stays with the kernel, and the warning names the family that failed.
func TestSystemTCPSelfTestPerFamily(t *testing.T) {
	listen := func(string, string) (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") }
	s, logs := familyStack(t, listen)
	if !s.SystemTCP() {
		t.Error("system TCP off for both families; only IPv6's probe went unanswered")
	}
	checkIPv4OnlySystem(t, s, logs)
}

// A family whose listener cannot be opened (IPv6 disabled on the host,
// say) goes through gVisor and the other keeps the kernel, as when one
// self-test fails; only when no family has a listener is system TCP off.
// Both families used to go through gVisor when either listener failed.
func TestSystemTCPListenerPerFamily(t *testing.T) {
	listen := func(network, _ string) (net.Listener, error) {
		if network == "tcp6" {
			return nil, errors.New("address family not supported by protocol")
		}
		return net.Listen("tcp4", "127.0.0.1:0")
	}
	s, logs := familyStack(t, listen)
	checkIPv4OnlySystem(t, s, logs)

	none, _ := familyStack(t, func(string, string) (net.Listener, error) { return nil, errors.New("no listeners here") })
	if none.SystemTCP() {
		t.Error("system TCP on with no listener for either family")
	}
}

// familyStack starts a system-TCP stack with an IPv4 and an IPv6 address
// whose listeners come from listen, while the test plays the kernel: it
// answers every IPv4 SYN the device writes (the self-test's probe) with a
// SYN-ACK and drops the IPv6 ones. The stack closes when the test ends.
func familyStack(t *testing.T, listen func(network, address string) (net.Listener, error)) (*Stack, *testenv.Buffer) {
	t.Helper()
	dev, peer := tuntest.NewPipe(1500)
	ctx, cancel := context.WithCancel(t.Context())
	kernel := make(chan struct{})
	go func() {
		defer close(kernel)
		for {
			pkt, err := peer.Next(ctx)
			if err != nil {
				return
			}
			p, ok := parseTCP(pkt)
			if !ok || p.v6 || p.flags != tcpSYN {
				continue
			}
			if peer.InjectContext(ctx, segment(p.dst, p.src, 77, p.seq()+1, tcpSYN|tcpACK, 65535)) != nil {
				return
			}
		}
	}()
	logs := &testenv.Buffer{}
	s, err := New(ctx, Config{Device: dev, Handler: rejectAll{}, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		SystemTCP: &SystemTCP{
			Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/15"), netip.MustParsePrefix("fc00::1/18")},
			// The packets never reach these: the test answers for the kernel.
			Listen: listen,
		}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		cancel()
		testenv.Recv(t, kernel, "the fake kernel's end")
	})
	return s, logs
}

// checkIPv4OnlySystem wants IPv4's TCP with the kernel, IPv6's with gVisor,
// and one warning, naming IPv6.
func checkIPv4OnlySystem(t *testing.T, s *Stack, logs *testenv.Buffer) {
	t.Helper()
	if v4, v6 := s.SystemTCPFamilies(); !v4 || v6 {
		t.Fatalf("SystemTCPFamilies() = %v, %v; want true, false", v4, v6)
	}
	// A stray ACK from the app (no such connection): the system stack
	// answers it with a RST itself (mine); gVisor gets it otherwise.
	stray := func(src, dst string) []byte {
		return segment(netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), 1, 1, tcpACK, 65535)
	}
	if mine, _ := s.sys.divert(stray("198.18.0.5:40000", "192.0.2.1:80")); !mine {
		t.Error("IPv4 TCP went to gVisor though IPv4's system TCP is up")
	}
	if mine, _ := s.sys.divert(stray("[fc00::5]:40000", "[2001:db8::1]:80")); mine {
		t.Error("IPv6 TCP stayed with the kernel though IPv6's system TCP is not up")
	}
	var warns []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") {
			warns = append(warns, l)
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "family=IPv6") {
		t.Errorf("want one warning, for family=IPv6; logged:\n%s", logs.String())
	}
}
