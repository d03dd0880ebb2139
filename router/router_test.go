package router

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/stack"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeOutbound records dials and serves them with in-memory pipes.
type fakeOutbound struct {
	name   string
	mu     sync.Mutex
	dialed []string
	dial   func(address string) (net.Conn, error)
	listen func() (PacketConn, error)
}

func (o *fakeOutbound) Name() string { return o.name }
func (o *fakeOutbound) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	o.mu.Lock()
	o.dialed = append(o.dialed, address)
	o.mu.Unlock()
	return o.dial(address)
}
func (o *fakeOutbound) ListenPacket(ctx context.Context) (PacketConn, error) {
	if o.listen == nil {
		return nil, ErrUDPUnsupported
	}
	return o.listen()
}

// fakeReq is a tcpRequest whose app side is one end of a TCP loopback pair
// (so CloseWrite works).
type fakeReq struct {
	src, dst netip.AddrPort
	app      stack.Conn // handed out by Accept
	accepted chan struct{}
	rejected chan struct{}
}

func newFakeReq(dst string) *fakeReq {
	return &fakeReq{src: netip.MustParseAddrPort("198.18.0.1:40000"), dst: netip.MustParseAddrPort(dst),
		accepted: make(chan struct{}), rejected: make(chan struct{})}
}
func (r *fakeReq) Src() netip.AddrPort { return r.src }
func (r *fakeReq) Dst() netip.AddrPort { return r.dst }
func (r *fakeReq) Accept() (stack.Conn, error) {
	close(r.accepted)
	return r.app, nil
}
func (r *fakeReq) Reject() { close(r.rejected) }

func newRouter(t *testing.T, decide Decider, mod func(*Config)) (*Router, chan FlowRecord) {
	t.Helper()
	flows := make(chan FlowRecord, 16)
	cfg := Config{Decide: decide, OnFlow: func(r FlowRecord) { flows <- r }, UDPIdle: time.Second, DNSIdle: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, flows
}

func TestTCPRelayAndFakeIP(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t) // appRemote plays the app
	upLocal, upRemote := testenv.TCPPair(t)   // upRemote plays the destination
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	r, flows := newRouter(t, Static(out), func(c *Config) {
		c.ReverseHost = func(a netip.Addr) (string, bool) {
			return "example.com", a == netip.MustParseAddr("198.18.0.9")
		}
	})
	req := newFakeReq("198.18.0.9:443")
	req.app = appLocal
	done := make(chan struct{})
	go func() { r.handleTCP(context.Background(), nil, req); close(done) }()
	testenv.Recv(t, req.accepted, "the app's connection accepted")
	if got := out.dialed; len(got) != 1 || got[0] != "example.com:443" {
		t.Fatalf("dialed %v, want the fake IP's domain example.com:443", got)
	}
	appRemote.Write([]byte("hello"))
	appRemote.CloseWrite()
	b, _ := io.ReadAll(upRemote)
	if string(b) != "hello" {
		t.Fatalf("destination got %q", b)
	}
	upRemote.Write([]byte("world"))
	upRemote.CloseWrite()
	b, _ = io.ReadAll(appRemote)
	if string(b) != "world" {
		t.Fatalf("app got %q", b)
	}
	testenv.Recv(t, done, "the handler's return")
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.Up != 5 || rec.Down != 5 || rec.Host != "example.com" || rec.Outbound != "up" || rec.Err != nil {
		t.Fatalf("flow record %+v", rec)
	}
	if r.Stats().TCPOpen.Load() != 0 || r.Stats().TCPTotal.Load() != 1 {
		t.Fatal("stats not updated")
	}
}

func TestTCPDialFailureRejects(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return nil, refused }}
	r, flows := newRouter(t, Static(out), nil)
	req := newFakeReq("10.0.0.1:80")
	r.handleTCP(context.Background(), nil, req)
	select {
	case <-req.rejected:
	default:
		t.Fatal("a failed dial did not reset the app's connection")
	}
	if rec := testenv.Recv(t, flows, "the flow's record"); !errors.Is(rec.Err, syscall.ECONNREFUSED) {
		t.Fatalf("flow error %v", rec.Err)
	}
}

// hangingOutbound dials until its context ends, like an upstream that never
// answers the SYN.
type hangingOutbound struct{ fakeOutbound }

func (o *hangingOutbound) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}

// TestTCPHangingDialRejectsAfterDialTimeout: an upstream that never answers
// costs the app a RST after DialTimeout, not a connection left hanging; and
// a cancelled handler context (the stack closing) ends the dial at once.
func TestTCPHangingDialRejectsAfterDialTimeout(t *testing.T) {
	out := &hangingOutbound{fakeOutbound{name: "hangs"}}
	r, flows := newRouter(t, Static(out), func(c *Config) { c.DialTimeout = 50 * time.Millisecond })
	req := newFakeReq("10.0.0.1:80")
	r.handleTCP(context.Background(), nil, req)
	select {
	case <-req.rejected:
	default:
		t.Fatal("a dial that timed out did not reset the app's connection")
	}
	if rec := testenv.Recv(t, flows, "the flow's record"); !errors.Is(rec.Err, context.DeadlineExceeded) {
		t.Fatalf("flow error %v, want the dial deadline", rec.Err)
	}

	r2, flows2 := newRouter(t, Static(out), nil) // default DialTimeout: 10 s
	ctx, cancel := context.WithCancel(context.Background())
	req2 := newFakeReq("10.0.0.1:80")
	done := make(chan struct{})
	go func() { r2.handleTCP(ctx, nil, req2); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(testenv.Patience):
		t.Fatal("cancelling the handler's context did not end a hanging dial")
	}
	select {
	case <-req2.rejected:
	default:
		t.Fatal("the app was not reset after the cancelled dial")
	}
	testenv.Recv(t, flows2, "the flow's record")
}

func TestTCPRejectRuleNeverDials(t *testing.T) {
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { t.Error("dialed"); return nil, errors.New("x") }}
	r, _ := newRouter(t, func(*rules.Metadata) Decision { return Decision{Action: Reject, Rule: "IP-CIDR,10.0.0.0/8,REJECT"} }, nil)
	_ = out
	req := newFakeReq("10.0.0.1:80")
	r.handleTCP(context.Background(), nil, req)
	select {
	case <-req.rejected:
	default:
		t.Fatal("REJECT did not reset")
	}
	if r.Stats().Rejected.Load() != 1 {
		t.Fatal("rejected not counted")
	}
}

func TestDialContextFrontDoor(t *testing.T) {
	r, _ := newRouter(t, func(m *rules.Metadata) Decision {
		if m.Host == "blocked.test" {
			return Decision{Action: Reject, Rule: "DOMAIN,blocked.test,REJECT"}
		}
		return Decision{Action: Proxy, Outbound: &fakeOutbound{name: "x", dial: func(a string) (net.Conn, error) {
			return nil, errors.New("dialed " + a)
		}}}
	}, nil)
	fd := r.FrontDoor(Inbound{Type: rules.InSocks, Name: "socks"}, nil)
	_, err := fd.DialContext(context.Background(), "tcp", "blocked.test:80")
	if !errors.Is(err, socks.ErrNotAllowed) || socks.ReplyForError(err) != socks.NotAllowed {
		t.Fatalf("rejected front-door dial: %v", err)
	}
	_, err = fd.DialContext(context.Background(), "tcp", "ok.test:80")
	if err == nil || err.Error() != "dialed ok.test:80" {
		t.Fatalf("allowed front-door dial: %v", err)
	}
}

// fakeFlow is an app UDP socket: datagrams in from the test, out to the test.
type fakeFlow struct {
	src     netip.AddrPort
	in      chan dgram
	out     chan dgram
	closed  chan struct{}
	expired chan struct{} // the read deadline passed
	once    sync.Once

	dmu      sync.Mutex
	deadline *time.Timer
}

type dgram struct {
	b    []byte
	addr netip.AddrPort
}

func newFakeFlow() *fakeFlow {
	return &fakeFlow{src: netip.MustParseAddrPort("198.18.0.1:5353"), in: make(chan dgram, 8), out: make(chan dgram, 8),
		closed: make(chan struct{}), expired: make(chan struct{}, 1)}
}
func (f *fakeFlow) Src() netip.AddrPort { return f.src }
func (f *fakeFlow) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-f.in:
		return copy(p, d.b), d.addr, nil
	case <-f.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	case <-f.expired:
		return 0, netip.AddrPort{}, os.ErrDeadlineExceeded
	}
}
func (f *fakeFlow) WriteTo(p []byte, from netip.AddrPort) (int, error) {
	f.out <- dgram{append([]byte(nil), p...), from}
	return len(p), nil
}
func (f *fakeFlow) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

// SetReadDeadline: a deadline closes the flow when it passes (no read is
// retried after one).
func (f *fakeFlow) SetReadDeadline(t time.Time) error {
	f.dmu.Lock()
	defer f.dmu.Unlock()
	if f.deadline != nil {
		f.deadline.Stop()
		f.deadline = nil
	}
	if !t.IsZero() {
		f.deadline = time.AfterFunc(time.Until(t), func() {
			select {
			case f.expired <- struct{}{}:
			default:
			}
		})
	}
	return nil
}

// fakePC answers every datagram sent to X with "re:"+payload from X and also
// from a second address (full cone).
type fakePC struct {
	replies chan dgram
	closed  chan struct{}
	once    sync.Once
	sent    chan string
}

func (p *fakePC) Send(b []byte, to socks.Addr) error {
	p.sent <- to.String()
	ap := netip.MustParseAddrPort(to.String())
	p.replies <- dgram{append([]byte("re:"), b...), ap}
	p.replies <- dgram{[]byte("other"), netip.MustParseAddrPort("192.0.2.99:9999")}
	return nil
}
func (p *fakePC) Recv(b []byte) (int, socks.Addr, error) {
	select {
	case d := <-p.replies:
		return copy(b, d.b), socks.AddrFromAddrPort(d.addr), nil
	case <-p.closed:
		return 0, socks.Addr{}, net.ErrClosed
	}
}
func (p *fakePC) Close() error { p.once.Do(func() { close(p.closed) }); return nil }

func TestUDPFullConeAndIdle(t *testing.T) {
	pc := &fakePC{replies: make(chan dgram, 8), closed: make(chan struct{}), sent: make(chan string, 8)}
	out := &fakeOutbound{name: "up", listen: func() (PacketConn, error) { return pc, nil }}
	r, flows := newRouter(t, Static(out), func(c *Config) { c.UDPIdle = 200 * time.Millisecond })
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	f.in <- dgram{[]byte("q"), netip.MustParseAddrPort("192.0.2.1:7")}
	if a := testenv.Recv(t, pc.sent, "a datagram sent upstream"); a != "192.0.2.1:7" {
		t.Fatalf("sent to %s", a)
	}
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "re:q" || d.addr != netip.MustParseAddrPort("192.0.2.1:7") {
		t.Fatalf("reply %q from %v", d.b, d.addr)
	}
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "other" || d.addr != netip.MustParseAddrPort("192.0.2.99:9999") {
		t.Fatalf("full-cone reply %q from %v", d.b, d.addr)
	}
	testenv.Recv(t, done, "the handler's return") // idle expiry ends the flow
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.Up != 1 || rec.Down != 9 || !errorsIsIdle(rec.Err) {
		t.Fatalf("flow record %+v", rec)
	}
	select {
	case <-pc.closed:
	default:
		t.Fatal("UDP session not closed after idle")
	}
}

// TestUDPFlowAcrossOutbounds: one app socket sends to two destinations
// whose rules name different outbounds; each datagram leaves through its
// own outbound's association, replies from both reach the app with their
// sources, and both associations close with the flow.
func TestUDPFlowAcrossOutbounds(t *testing.T) {
	newPC := func() *fakePC {
		return &fakePC{replies: make(chan dgram, 8), closed: make(chan struct{}), sent: make(chan string, 8)}
	}
	pcA, pcB := newPC(), newPC()
	a := &fakeOutbound{name: "a", listen: func() (PacketConn, error) { return pcA, nil }}
	b := &fakeOutbound{name: "b", listen: func() (PacketConn, error) { return pcB, nil }}
	decide := func(m *rules.Metadata) Decision {
		if m.Dst.Port() == 2 {
			return Decision{Action: Proxy, Outbound: b, Rule: "DST-PORT,2,b"}
		}
		return Decision{Action: Proxy, Outbound: a, Rule: "MATCH,a"}
	}
	r, flows := newRouter(t, decide, func(c *Config) { c.UDPIdle = time.Second }) // long against the test's steps
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()

	f.in <- dgram{[]byte("x"), netip.MustParseAddrPort("192.0.2.1:1")}
	if got := testenv.Recv(t, pcA.sent, "a datagram sent upstream"); got != "192.0.2.1:1" {
		t.Fatalf("a sent to %s", got)
	}
	f.in <- dgram{[]byte("y"), netip.MustParseAddrPort("192.0.2.2:2")}
	select {
	case got := <-pcB.sent:
		if got != "192.0.2.2:2" {
			t.Fatalf("b sent to %s", got)
		}
	case <-time.After(testenv.Patience):
		t.Fatal("the datagram whose rule names b never left through b")
	}
	want := map[string]netip.AddrPort{
		"re:x":  netip.MustParseAddrPort("192.0.2.1:1"),
		"re:y":  netip.MustParseAddrPort("192.0.2.2:2"),
		"other": netip.MustParseAddrPort("192.0.2.99:9999"),
	}
	for range 4 { // re:x, other, re:y, other, in some order
		d := testenv.Recv(t, f.out, "a datagram to the app")
		if w, ok := want[string(d.b)]; !ok || w != d.addr {
			t.Fatalf("reply %q from %v", d.b, d.addr)
		}
	}
	testenv.Recv(t, done, "the handler's return") // idle expiry ends the flow
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.Outbound != "a" || rec.Up != 2 || rec.Down != 2*(4+5) || !errorsIsIdle(rec.Err) {
		t.Fatalf("flow record %+v", rec)
	}
	for name, pc := range map[string]*fakePC{"a": pcA, "b": pcB} {
		select {
		case <-pc.closed:
		default:
			t.Errorf("association through %s not closed with the flow", name)
		}
	}
	select {
	case <-pcA.sent:
		t.Error("a datagram for b went through a")
	case <-pcB.sent:
		t.Error("a datagram for a went through b")
	default:
	}
}

func errorsIsIdle(err error) bool { return err != nil && err.Error() == "relay: idle timeout" }

type fakeDNS struct{}

func (fakeDNS) Intercept(dst netip.AddrPort) bool                 { return dst.Port() == 53 }
func (fakeDNS) ServeStream(ctx context.Context, c net.Conn) error { return c.Close() }

func (fakeDNS) Handle(ctx context.Context, q []byte) ([]byte, error) {
	if string(q) == "upstream-down" {
		return []byte("servfail"), errors.New("every nameserver failed")
	}
	return append([]byte("answer:"), q...), nil
}

func TestUDPDNSInterceptAndNoUDP(t *testing.T) {
	out := &fakeOutbound{name: "tcp-only"} // no UDP
	r, flows := newRouter(t, Static(out), func(c *Config) { c.DNS = fakeDNS{}; c.DNSIdle = time.Second })
	f := newFakeFlow()
	go r.handleUDP(context.Background(), nil, f)
	f.in <- dgram{[]byte("q1"), netip.MustParseAddrPort("198.18.0.2:53")}
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "answer:q1" || d.addr.Port() != 53 {
		t.Fatalf("DNS answer %q from %v", d.b, d.addr)
	}
	// A failure that comes with an answer (SERVFAIL) is still answered,
	// so the app does not wait for its timeout.
	f.in <- dgram{[]byte("upstream-down"), netip.MustParseAddrPort("198.18.0.2:53")}
	if d := testenv.Recv(t, f.out, "a datagram to the app"); string(d.b) != "servfail" {
		t.Fatalf("DNS answer %q, want the SERVFAIL sent along with the error", d.b)
	}
	testenv.Recv(t, flows, "the flow's record")

	// An outbound without UDP: the flow ends at once with ErrUDPUnsupported.
	f2 := newFakeFlow()
	f2.in <- dgram{[]byte("x"), netip.MustParseAddrPort("192.0.2.1:7")}
	r.handleUDP(context.Background(), nil, f2)
	if rec := testenv.Recv(t, flows, "the flow's record"); !errors.Is(rec.Err, ErrUDPUnsupported) {
		t.Fatalf("flow without UDP: %+v", rec)
	}
}

type dropReq struct {
	*fakeReq
	dropped chan struct{}
}

func (d dropReq) Drop() { close(d.dropped) }

func TestTCPRejectDropDropsSilently(t *testing.T) {
	r, flows := newRouter(t, func(*rules.Metadata) Decision { return Decision{Action: RejectDrop, Rule: "x"} }, nil)
	req := dropReq{newFakeReq("10.0.0.1:80"), make(chan struct{})}
	r.handleTCP(context.Background(), nil, req)
	select {
	case <-req.dropped:
	default:
		t.Fatal("REJECT-DROP did not drop")
	}
	select {
	case <-req.rejected:
		t.Fatal("REJECT-DROP sent a reset")
	default:
	}
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Outbound != "REJECT-DROP" {
		t.Fatalf("flow record %+v", rec)
	}
}
