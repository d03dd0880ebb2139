package router

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/rules"
)

var uuidShape = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}$`)

// waitFlows polls Flows until want says yes (the flow is registered on the
// router's goroutine), bounded in time.
func waitFlows(t *testing.T, r *Router, want func([]FlowInfo) bool) []FlowInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fs := r.Flows()
		if want(fs) {
			return fs
		}
		if time.Now().After(deadline) {
			t.Fatalf("flows never became what the test waits for: %+v", fs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTableTCP: an open TCP flow is in the table with everything the API
// shows, its bytes move while it is open, CloseFlow resets the app's
// connection, and the record says why it ended.
func TestTableTCP(t *testing.T) {
	appLocal, appRemote := testenv.TCPPair(t) // appRemote plays the app
	upLocal, upRemote := testenv.TCPPair(t)   // upRemote plays the destination
	out := &fakeOutbound{name: "corp", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	hits := new(RuleHits)
	mt := &rules.Match{Action: rules.Action{Kind: rules.Proxy, Target: "corp"}, Rule: "DOMAIN-SUFFIX,example.com,corp", Source: "r.txt:3", Index: 2}
	decide := func(m *rules.Metadata) Decision {
		m.Process, m.UID = "/usr/bin/curl", 1000 // as a process rule's lookup leaves them
		return Decision{Action: Proxy, Outbound: out, Rule: mt.String(), Match: mt, Hits: hits}
	}
	reg := metrics.NewRegistry()
	r, flows := newRouter(t, decide, func(c *Config) {
		c.Metrics = reg
		c.ReverseHost = func(a netip.Addr) (string, bool) { return "www.example.com", a == netip.MustParseAddr("198.18.0.9") }
	})
	req := newFakeReq("198.18.0.9:443")
	req.app = userspaceConn{appLocal} // as gVisor's: counted as bytes move, not spliced
	done := make(chan struct{})
	go func() { r.handleTCP(context.Background(), &Inbound{Type: rules.InTUN, Name: "tun0"}, req); close(done) }()

	appRemote.Write([]byte("hello"))
	buf := make([]byte, 5)
	io.ReadFull(upRemote, buf)
	upRemote.Write([]byte("world!"))
	io.ReadFull(appRemote, make([]byte, 6))

	fs := waitFlows(t, r, func(fs []FlowInfo) bool { return len(fs) == 1 && fs[0].Up == 5 && fs[0].Down == 6 })
	f := fs[0]
	if !uuidShape.MatchString(f.ID) {
		t.Errorf("id %q is not uuid-shaped", f.ID)
	}
	want := FlowInfo{ID: f.ID, Network: "tcp", InType: "tun", InName: "tun0", Src: req.src, Dst: req.dst,
		Host: "www.example.com", FakeIP: true, Process: "/usr/bin/curl", UID: 1000, Outbound: "corp", Rule: mt.String(), Match: mt,
		Target: "www.example.com:443", Remote: upLocal.RemoteAddr().String(), Start: f.Start, Up: 5, Down: 6}
	if f != want {
		t.Errorf("flow\n got %+v\nwant %+v", f, want)
	}
	if g, ok := r.Flow(f.ID); !ok || g.ID != f.ID {
		t.Errorf("Flow(%s) = %v, %v", f.ID, g, ok)
	}
	if n, last := hits.Count(); n != 1 || last.IsZero() {
		t.Errorf("rule hits %d at %v, want 1", n, last)
	}
	if tot := r.OutboundTotals()["corp"]; tot != (OutboundTotals{Flows: 1, Up: 5, Down: 6}) {
		t.Errorf("open flow's outbound totals %+v", tot)
	}

	if r.CloseFlow("no-such-id") {
		t.Error("CloseFlow of an unknown id reported true")
	}
	if !r.CloseFlow(f.ID) {
		t.Fatal("CloseFlow of the open flow reported false")
	}
	appRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := appRemote.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app read %v after CloseFlow, want connection reset", err)
	}
	testenv.Recv(t, done, "the handler's return")
	rec := testenv.Recv(t, flows, "the flow's record")
	if rec.ID != f.ID || !errors.Is(rec.Err, ErrClosedByRequest) || rec.Up != 5 || rec.Down != 6 {
		t.Errorf("record %+v", rec)
	}
	if len(r.Flows()) != 0 {
		t.Error("the closed flow is still in the table")
	}
	// Its bytes moved to the finished totals: nothing lost, nothing twice.
	if tot := r.OutboundTotals()["corp"]; tot != (OutboundTotals{Flows: 1, Up: 5, Down: 6}) {
		t.Errorf("finished flow's outbound totals %+v", tot)
	}
	if up, down := r.Totals(); up != 5 || down != 6 {
		t.Errorf("Totals %d/%d", up, down)
	}
	var text bytes.Buffer
	reg.WriteText(&text)
	for _, line := range []string{
		`tunsocks_connections_total{network="tcp",inbound="tun0",outbound="corp",rule_type="DOMAIN-SUFFIX"} 1`,
		`tunsocks_bytes_total{direction="down",outbound="corp"} 6`,
		`tunsocks_dial_duration_seconds_count{outbound="corp",result="ok"} 1`,
	} {
		if !strings.Contains(text.String(), line+"\n") {
			t.Errorf("metrics lack %s:\n%s", line, text.String())
		}
	}
	if err := metrics.Check(&text); err != nil {
		t.Error(err)
	}
}

// TestTableUDP: a UDP flow is in the table from its first datagram, its
// rule counts it once however many datagrams it sends, and CloseFlow ends
// it.
func TestTableUDP(t *testing.T) {
	pc := &fakePC{replies: make(chan dgram, 64), closed: make(chan struct{}), sent: make(chan string, 64)}
	out := &fakeOutbound{name: "up", listen: func() (PacketConn, error) { return pc, nil }}
	hits := new(RuleHits)
	mt := &rules.Match{Rule: "NETWORK,udp,up", Index: 0}
	var lookups atomic.Int32
	r, flows := newRouter(t, func(m *rules.Metadata) Decision {
		return Decision{Action: Proxy, Outbound: out, Rule: "NETWORK,udp,up", Match: mt, Hits: hits}
	}, func(c *Config) {
		c.UDPIdle = time.Minute
		c.Process = func(network string, src, dst netip.AddrPort) (procinfo.Owner, error) {
			lookups.Add(1)
			return procinfo.Owner{Path: "/usr/bin/dig", UID: 0, PID: 4242}, nil
		}
	})
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	dst := netip.MustParseAddrPort("192.0.2.1:7")
	for range 3 {
		f.in <- dgram{[]byte("q"), dst}
		testenv.Recv(t, pc.sent, "a datagram sent upstream")
		testenv.Recv(t, f.out, "a datagram to the app")
		testenv.Recv(t, f.out, "a datagram to the app")
	}
	if lookups.Load() != 0 {
		t.Error("the process was looked up before anyone asked for the flows")
	}
	fs := waitFlows(t, r, func(fs []FlowInfo) bool { return len(fs) == 1 && fs[0].Up == 3 })
	if f := fs[0]; f.Network != "udp" || f.Outbound != "up" || f.Dst != dst || f.Process != "/usr/bin/dig" || f.UID != 0 || f.PID != 4242 || f.Target != "192.0.2.1:7" {
		t.Errorf("flow %+v", f)
	}
	r.Flows()
	if n := lookups.Load(); n != 1 {
		t.Errorf("%d process lookups for one flow listed twice, want 1", n)
	}
	if n, _ := hits.Count(); n != 1 {
		t.Errorf("rule hits %d for one flow of three datagrams, want 1", n)
	}
	if n := r.CloseAll(); n != 1 {
		t.Errorf("CloseAll closed %d flows", n)
	}
	testenv.Recv(t, done, "the handler's return")
	rec := testenv.Recv(t, flows, "the flow's record")
	if !errors.Is(rec.Err, ErrClosedByRequest) || rec.ID != fs[0].ID || rec.Up != 3 || rec.Down != 3*(4+5) {
		t.Errorf("record %+v", rec)
	}
}

// TestTableDNSFlow: DNS answered in-process is a flow of its own, outbound
// DNS.
func TestTableDNSFlow(t *testing.T) {
	r, flows := newRouter(t, Static(&fakeOutbound{name: "up"}), func(c *Config) { c.DNS = fakeDNS{}; c.DNSIdle = time.Minute })
	f := newFakeFlow()
	done := make(chan struct{})
	go func() { r.handleUDP(context.Background(), nil, f); close(done) }()
	f.in <- dgram{[]byte("query"), netip.MustParseAddrPort("198.18.0.2:53")}
	testenv.Recv(t, f.out, "a datagram to the app")
	fs := waitFlows(t, r, func(fs []FlowInfo) bool { return len(fs) == 1 })
	if fs[0].Outbound != "DNS" || fs[0].Rule != "dns" {
		t.Errorf("DNS flow %+v", fs[0])
	}
	r.CloseFlow(fs[0].ID)
	testenv.Recv(t, done, "the handler's return")
	if rec := testenv.Recv(t, flows, "the flow's record"); rec.Outbound != "DNS" || !errors.Is(rec.Err, ErrClosedByRequest) {
		t.Errorf("record %+v", rec)
	}
}

// TestTableConcurrent lists, counts and closes flows while they open and
// end; -race checks the table's locking and the totals stay exact.
func TestTableConcurrent(t *testing.T) {
	out := &fakeOutbound{name: "up"}
	var mu sync.Mutex
	var remotes []net.Conn
	out.dial = func(string) (net.Conn, error) {
		a, b := net.Pipe()
		mu.Lock()
		remotes = append(remotes, b)
		mu.Unlock()
		go io.Copy(b, b) // echo
		return a, nil
	}
	reg := metrics.NewRegistry()
	r, flows := newRouter(t, Static(out), func(c *Config) { c.Metrics = reg })
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			app, peer := net.Pipe()
			req := &fakeReq{src: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(40000+i)),
				dst: netip.MustParseAddrPort("192.0.2.1:80"), app: pipeConn{app}, accepted: make(chan struct{}), rejected: make(chan struct{})}
			go func() {
				peer.Write([]byte("ping"))
				io.ReadFull(peer, make([]byte, 4))
				if i%2 == 0 {
					peer.Close() // ends on its own
				}
			}()
			r.handleTCP(context.Background(), nil, req)
		}()
	}
	stop := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			r.Flows()
			r.OutboundTotals()
			var b bytes.Buffer
			reg.WriteText(&b)
			time.Sleep(time.Millisecond)
		}
	}()
	waitFlows(t, r, func(fs []FlowInfo) bool {
		for _, f := range fs {
			if f.Down < 4 {
				return false
			}
		}
		return len(fs) == n/2 && len(flows) == n/2
	})
	r.CloseAll()
	wg.Wait()
	close(stop)
	testenv.Recv(t, scraped, "the scraper's return")
	mu.Lock()
	for _, c := range remotes {
		c.Close()
	}
	mu.Unlock()
	if tot := r.OutboundTotals()["up"]; tot.Flows != n || tot.Up != 4*n || tot.Down != 4*n {
		t.Errorf("totals after %d flows of 4 bytes each way: %+v", n, tot)
	}
	if len(r.Flows()) != 0 {
		t.Error("flows left in the table")
	}
}

// userspaceConn hides a kernel socket from the relay's splice path, as a
// netstack conn is, and keeps its SO_LINGER for resets.
type userspaceConn struct{ tc *net.TCPConn }

func (u userspaceConn) Read(p []byte) (int, error)         { return u.tc.Read(p) }
func (u userspaceConn) Write(p []byte) (int, error)        { return u.tc.Write(p) }
func (u userspaceConn) Close() error                       { return u.tc.Close() }
func (u userspaceConn) CloseWrite() error                  { return u.tc.CloseWrite() }
func (u userspaceConn) LocalAddr() net.Addr                { return u.tc.LocalAddr() }
func (u userspaceConn) RemoteAddr() net.Addr               { return u.tc.RemoteAddr() }
func (u userspaceConn) SetDeadline(t time.Time) error      { return u.tc.SetDeadline(t) }
func (u userspaceConn) SetReadDeadline(t time.Time) error  { return u.tc.SetReadDeadline(t) }
func (u userspaceConn) SetWriteDeadline(t time.Time) error { return u.tc.SetWriteDeadline(t) }
func (u userspaceConn) SetLinger(sec int) error            { return u.tc.SetLinger(sec) }

// pipeConn gives a net.Pipe end the CloseWrite a stack.Conn has.
type pipeConn struct{ net.Conn }

func (p pipeConn) CloseWrite() error { return p.Conn.Close() }

func TestDialReason(t *testing.T) {
	for err, want := range map[error]string{
		&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}: "refused",
		context.DeadlineExceeded:                            "timeout",
		&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}: "unreachable",
		errors.New("something else"):                        "other",
		&net.OpError{Op: "listen", Err: ErrUDPUnsupported}:  "proto",
		&net.OpError{Op: "dial", Err: syscall.ETIMEDOUT}:    "timeout",
		&net.OpError{Op: "dial", Err: syscall.ENETUNREACH}:  "unreachable",
	} {
		if got := dialReason(err); got != want {
			t.Errorf("dialReason(%v) = %q, want %q", err, got, want)
		}
	}
}

// BenchmarkFlowBookkeeping is what the flow table and the flow metrics
// add to each flow: an id, the entry, its metrics series, the rule hit,
// and taking it out with its totals.
func BenchmarkFlowBookkeeping(b *testing.B) {
	r, err := New(Config{Decide: Static(&fakeOutbound{name: "corp"}), Metrics: metrics.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	mt := &rules.Match{Rule: "MATCH,corp", Type: "MATCH", Index: 0}
	d := Decision{Action: Proxy, Outbound: &fakeOutbound{name: "corp"}, Rule: "corp by rule #1", Match: mt, Hits: new(RuleHits)}
	in := flowIn{typ: "tun", name: "tun0"}
	src, dst := netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("192.0.2.1:443")
	m := &rules.Metadata{Network: "tcp", Src: src, Dst: dst, UID: -1}
	b.ReportAllocs()
	for b.Loop() {
		r.countFlow("tcp", in, "corp", d)
		d.Hits.Hit()
		e := r.newEntry("tcp", in, src)
		e.decided(m, d, dst, ipAddr(dst))
		e.closeFn = func() {}
		r.table.add(e)
		e.upC.Add(100)
		r.dialed("corp", time.Millisecond, nil)
		r.table.remove(e)
	}
}
