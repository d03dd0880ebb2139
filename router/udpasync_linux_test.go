package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
	"github.com/tunsocks/tunsocks/socksserver"
	"github.com/tunsocks/tunsocks/stack"
)

// kernelPC is a DIRECT-like session: a kernel UDP socket that sends every
// datagram to one address (a loopback echo) whatever it is sent to, and
// reports every reply as coming from as (a loopback source is a martian
// to the app).
type kernelPC struct {
	c  *net.UDPConn
	to netip.AddrPort
	as socks.Addr
}

func (p *kernelPC) Send(b []byte, _ socks.Addr) error {
	_, err := p.c.WriteToUDPAddrPort(b, p.to)
	return err
}
func (p *kernelPC) Recv(b []byte) (int, socks.Addr, error) {
	n, _, err := p.c.ReadFromUDPAddrPort(b)
	return n, p.as, err
}
func (p *kernelPC) Close() error                          { return p.c.Close() }
func (p *kernelPC) SetReadDeadline(t time.Time) error     { return p.c.SetReadDeadline(t) }
func (p *kernelPC) SyscallConn() (syscall.RawConn, error) { return p.c.SyscallConn() }
func (p *kernelPC) TryRecv(b []byte) (int, socks.Addr, bool, error) {
	rc, err := p.c.SyscallConn()
	if err != nil {
		return 0, socks.Addr{}, false, err
	}
	n, _, ok, err := relay.RecvNow(rc, b)
	return n, p.as, ok, err
}

// socksPC is a SOCKS5 association (as the outbound package's) that sends
// every datagram to one address whatever it is sent to, and reports
// every reply as coming from as.
type socksPC struct {
	u      *socksclient.UDPConn
	to, as socks.Addr
}

func (p *socksPC) Send(b []byte, _ socks.Addr) error {
	_, err := p.u.WriteTo(b, p.to)
	return err
}
func (p *socksPC) Recv(b []byte) (int, socks.Addr, error) {
	n, _, err := p.u.ReadFrom(b)
	return n, p.as, err
}
func (p *socksPC) Close() error                          { return p.u.Close() }
func (p *socksPC) SetReadDeadline(t time.Time) error     { return p.u.SetReadDeadline(t) }
func (p *socksPC) SyscallConn() (syscall.RawConn, error) { return p.u.SyscallConn() }
func (p *socksPC) TryRecv(b []byte) (int, socks.Addr, bool, error) {
	n, _, ok, err := p.u.TryReadFrom(b)
	return n, p.as, ok, err
}
func (p *socksPC) NotifyClose(fn func()) { p.u.NotifyEnd(fn) }

// udpEchoOutbound opens sessions of kind ("direct" or "socks") that all
// reach one loopback UDP echo server, whose replies come as if from as.
func udpEchoOutbound(t *testing.T, kind string, as netip.AddrPort, pl *relay.Poller) *fakeOutbound {
	t.Helper()
	echo := testenv.UDPEcho(t).LocalAddr().(*net.UDPAddr).AddrPort()
	out := &fakeOutbound{name: kind}
	switch kind {
	case "direct":
		out.listen = func() (PacketConn, error) {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return nil, err
			}
			return &kernelPC{c: c, to: echo, as: socks.AddrFromAddrPort(as)}, nil
		}
	case "socks":
		srv, err := socksserver.New(socksserver.Config{})
		if err != nil {
			t.Fatal(err)
		}
		sc, err := socksclient.Parse("socks5://"+testenv.Serve(t, srv), nil)
		if err != nil {
			t.Fatal(err)
		}
		out.listen = func() (PacketConn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			u, err := sc.ListenPacketPolled(ctx, pl)
			if err != nil {
				return nil, err
			}
			return &socksPC{u: u, to: socks.AddrFromAddrPort(echo), as: socks.AddrFromAddrPort(as)}, nil
		}
	}
	return out
}

// udpFlowGoroutines counts goroutines serving UDP flows: a handler or a
// relay direction (old or new), and the SOCKS association's watch.
func udpFlowGoroutines() int {
	return testenv.Goroutines(func(g string) bool {
		// The SOCKS server's own UDP relays run relay.Packets too: not
		// the router's.
		return strings.Contains(g, "router.(*Router).handleUDP") || strings.Contains(g, "router.(*udpSession)") ||
			strings.Contains(g, "router.(*Router).relayUDPAsync") || strings.Contains(g, "relay.(*parkedUp).run") ||
			strings.Contains(g, "relay.(*parkedDown).run") || strings.Contains(g, "socksclient.(*UDPConn).watch") ||
			strings.Contains(g, "router.(*dnsFlow)")
	})
}

// echoFlow sends p from c to dst and waits for the echo, which must be
// byte-exact.
func echoFlow(c net.PacketConn, dst netip.AddrPort, p []byte) error {
	if _, err := c.WriteTo(p, net.UDPAddrFromAddrPort(dst)); err != nil {
		return err
	}
	buf := make([]byte, len(p)+16)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], p) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes, different", len(p), n)
	}
	return nil
}

// TestUDPIdleFlowsHoldNoGoroutine: through the real netstack, with a
// Poller, held UDP flows through DIRECT-like sockets and SOCKS5
// associations cost no goroutine once idle (before: two per flow, the
// handler in the up pump and the down pump), still echo byte-exact when
// poked afterwards, and end with their records when shed.
func TestUDPIdleFlowsHoldNoGoroutine(t *testing.T) {
	for _, kind := range []string{"direct", "socks"} {
		t.Run(kind, func(t *testing.T) { testUDPIdleFlows(t, kind) })
	}
}

func testUDPIdleFlows(t *testing.T, kind string) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Fatalf("no relay poller: %v", err)
	}
	defer pl.Close()
	dst := netip.MustParseAddrPort("203.0.113.7:7")
	out := udpEchoOutbound(t, kind, dst, pl)
	flows := make(chan FlowRecord, 64)
	r, st, app := routerStack(t, Config{Decide: Static(out), Poller: pl, UDPIdle: time.Minute,
		OnFlow: func(rec FlowRecord) { flows <- rec }}, nil)
	const n = 20
	conns := make([]net.PacketConn, n)
	for i := range conns {
		c, err := app.ListenUDP(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(20000+i)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	payload := func(i, round int) []byte {
		// Sizes from 1 byte to more than an MTU (fragmented both ways).
		p := make([]byte, 1+(i*577+round*311)%3000)
		for j := range p {
			p[j] = byte(i*7 + j*13 + round)
		}
		return p
	}
	for i, c := range conns {
		if err := echoFlow(c, dst, payload(i, 0)); err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
	}
	got := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = udpFlowGoroutines(); got == 0 {
			break
		}
	}
	if got != 0 {
		t.Fatalf("%d idle UDP flows hold %d goroutines, want none", n, got)
	}
	if open := r.Stats().UDPOpen.Load(); open != n {
		t.Fatalf("UDPOpen %d with %d flows held", open, n)
	}
	// Parked flows wake both ways, several times.
	for round := 1; round <= 3; round++ {
		for i, c := range conns {
			if err := echoFlow(c, dst, payload(i, round)); err != nil {
				t.Fatalf("round %d, flow %d after parking: %v", round, i, err)
			}
		}
	}
	if total := st.Stats().UDPTotal; total != n {
		t.Fatalf("the stack made %d flows for %d app sockets", total, n)
	}
	if shed := r.ShedIdle(1); shed != n {
		t.Fatalf("ShedIdle(1) closed %d of %d flows", shed, n)
	}
	for range n {
		select {
		case rec := <-flows:
			if !errors.Is(rec.Err, ErrShed) || rec.Outbound != kind || rec.Up != rec.Down || rec.Up == 0 || rec.ID == "" {
				t.Fatalf("record of a shed flow %+v, want shed, through %s, bytes up = down", rec, kind)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a shed flow never ended")
		}
	}
	for deadline := time.Now().Add(10 * time.Second); r.Stats().UDPOpen.Load() != 0 || st.Stats().UDPOpen != 0 || len(r.Flows()) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after the shed: router UDPOpen %d, stack UDPOpen %d, %d flows in the table",
				r.Stats().UDPOpen.Load(), st.Stats().UDPOpen, len(r.Flows()))
		}
	}
}

// TestUDPParkedFlowIdleAndEviction: a parked flow still ends on its idle
// timer (its record says so, its session closes), and one evicted by the
// stack for a newer flow (Config.MaxUDPFlows) ends at once, while the
// newer flow echoes.
func TestUDPParkedFlowIdleAndEviction(t *testing.T) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Fatalf("no relay poller: %v", err)
	}
	defer pl.Close()
	dst := netip.MustParseAddrPort("203.0.113.7:7")
	out := udpEchoOutbound(t, "direct", dst, pl)
	setup := func(idle time.Duration) (*stack.Stack, chan FlowRecord, func(port uint16) net.PacketConn) {
		flows := make(chan FlowRecord, 8)
		_, st, app := routerStack(t, Config{Decide: Static(out), Poller: pl, UDPIdle: idle,
			OnFlow: func(rec FlowRecord) { flows <- rec }}, func(c *stack.Config) { c.MaxUDPFlows = 1 })
		return st, flows, func(port uint16) net.PacketConn {
			c, err := app.ListenUDP(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
	}

	st, flows, listen := setup(500 * time.Millisecond)
	if err := echoFlow(listen(21000), dst, []byte("idle")); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-flows:
		if !errorsIsIdle(rec.Err) || rec.Up != 4 || rec.Down != 4 {
			t.Fatalf("record of the idle flow %+v, want an idle timeout, 4 bytes each way", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the parked flow never timed out")
	}
	for deadline := time.Now().Add(10 * time.Second); st.Stats().UDPOpen != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the idle flow's stack flow was not closed")
		}
	}

	st, flows, listen = setup(time.Minute)
	b, c := listen(21001), listen(21002)
	if err := echoFlow(b, dst, []byte("evicted")); err != nil {
		t.Fatal(err)
	}
	if err := echoFlow(c, dst, []byte("newer")); err != nil {
		t.Fatal(err)
	}
	select {
	case rec := <-flows:
		if rec.Src.Port() != 21001 || rec.Up != 7 || rec.Down != 7 || rec.Err != nil {
			t.Fatalf("record of the evicted flow %+v, want :21001's, 7 bytes each way, no error", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the evicted flow never ended")
	}
	if err := echoFlow(c, dst, []byte("newer again")); err != nil {
		t.Fatal(err)
	}
	if ev := st.Stats().UDPEvicted; ev != 1 {
		t.Fatalf("stack evicted %d flows, want 1", ev)
	}
}

// BenchmarkUDPFlowEcho measures a busy UDP flow through the real netstack
// and the router to a loopback echo over a DIRECT-like socket: "sync" is
// the relay with two goroutines per flow (no Poller), "async" the parked
// one (relay.PacketsAsync). pingpong sends one datagram and waits for
// its echo; burst sends 16 and then reads the 16 echoes; sparse sends
// one every 150 ms, so the async relay parks between them (-benchtime
// 100x for it). cpu-µs/op is the process's CPU time (user + system, the
// app stack and the echo included) per datagram echoed.
//
//	go test -run '^$' -bench 'UDPFlowEcho/.*burst' -benchtime 20000x ./router/
//	go test -run '^$' -bench 'UDPFlowEcho/.*sparse' -benchtime 100x ./router/
func BenchmarkUDPFlowEcho(b *testing.B) {
	for _, mode := range []string{"sync", "async"} {
		for _, burst := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s-burst%d", mode, burst), func(b *testing.B) {
				benchUDPFlowEcho(b, mode == "async", burst, 0)
			})
		}
		b.Run(mode+"-sparse", func(b *testing.B) {
			benchUDPFlowEcho(b, mode == "async", 1, 150*time.Millisecond)
		})
	}
}

func benchUDPFlowEcho(b *testing.B, async bool, burst int, gap time.Duration) {
	dst := netip.MustParseAddrPort("203.0.113.7:7")
	echo := testenv.UDPEcho(b).LocalAddr().(*net.UDPAddr).AddrPort()
	out := &fakeOutbound{name: "direct", listen: func() (PacketConn, error) {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		return &kernelPC{c: c, to: echo, as: socks.AddrFromAddrPort(dst)}, nil
	}}
	cfg := Config{Decide: Static(out), UDPIdle: time.Minute}
	// A Poller runs in both, as in tunsocks (the TCP relay's): its
	// goroutine waiting in epoll_wait costs the process some CPU of its
	// own while everything else is idle.
	pl, err := relay.NewPoller()
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { pl.Close() })
	if async {
		cfg.Poller = pl
	}
	_, _, app := routerStack(b, cfg, nil)
	c, err := app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:22000"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := make([]byte, 100)
	if err := echoFlow(c, dst, p); err != nil {
		b.Fatal(err)
	}
	to := net.UDPAddrFromAddrPort(dst)
	buf := make([]byte, 2048)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := 0; i < b.N; i += burst {
		if gap > 0 {
			time.Sleep(gap)
		}
		for range burst {
			c.WriteTo(p, to)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for range burst {
			if _, _, err := c.ReadFrom(buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()+ru1.Stime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")

}

// TestUDPDNSFlowParks: a flow that asks the intercepted DNS address holds
// no goroutine between queries (before: its handler waited in
// serveDNSDatagrams for DNSIdle), answers each query, goes on as an
// ordinary flow when it sends elsewhere (still answering DNS), and a
// DNS-only flow ends after DNSIdle with its record.
func TestUDPDNSFlowParks(t *testing.T) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Fatalf("no relay poller: %v", err)
	}
	defer pl.Close()
	echoDst := netip.MustParseAddrPort("203.0.113.7:7")
	dnsDst := netip.MustParseAddrPort("198.18.0.2:53")
	out := udpEchoOutbound(t, "direct", echoDst, pl)
	setup := func(dnsIdle time.Duration) (*Router, *stack.Stack, chan FlowRecord, net.PacketConn) {
		flows := make(chan FlowRecord, 8)
		r, st, app := routerStack(t, Config{Decide: Static(out), Poller: pl, DNS: fakeDNS{}, DNSIdle: dnsIdle, UDPIdle: time.Minute,
			OnFlow: func(rec FlowRecord) { flows <- rec }}, nil)
		c, err := app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:23000"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return r, st, flows, c
	}
	ask := func(c net.PacketConn, q string) {
		t.Helper()
		if _, err := c.WriteTo([]byte(q), net.UDPAddrFromAddrPort(dnsDst)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := c.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "answer:"+q || from.(*net.UDPAddr).AddrPort() != dnsDst {
			t.Fatalf("query %q: answer %q from %v, %v", q, buf[:n], from, err)
		}
	}
	idle := func() {
		t.Helper()
		got := 0
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if got = udpFlowGoroutines(); got == 0 {
				return
			}
		}
		t.Fatalf("an idle flow holds %d goroutines, want none", got)
	}

	r, st, flows, c := setup(time.Minute)
	ask(c, "q1")
	idle()
	ask(c, "q2")
	idle()
	if err := echoFlow(c, echoDst, []byte("elsewhere")); err != nil {
		t.Fatal(err)
	}
	ask(c, "q3")
	idle()
	if err := echoFlow(c, echoDst, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if total := st.Stats().UDPTotal; total != 1 {
		t.Fatalf("the stack made %d flows for one app socket", total)
	}
	if shed := r.ShedIdle(1); shed != 1 {
		t.Fatalf("ShedIdle(1) closed %d flows, want the one", shed)
	}
	select {
	case rec := <-flows:
		up := int64(len("q1q2elsewhereq3again"))
		down := int64(len("answer:q1answer:q2elsewhereanswer:q3again"))
		if !errors.Is(rec.Err, ErrShed) || rec.Outbound != "DNS" || rec.Up != up || rec.Down != down {
			t.Fatalf("record %+v, want shed, through DNS first, %d up, %d down", rec, up, down)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shed flow never ended")
	}

	r, st, flows, c = setup(300 * time.Millisecond)
	ask(c, "q1")
	ask(c, "q2")
	select {
	case rec := <-flows:
		if !errorsIsIdle(rec.Err) || rec.Outbound != "DNS" || rec.Up != 4 || rec.Down != 18 {
			t.Fatalf("record %+v, want an idle timeout, through DNS, 4 up, 18 down", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the DNS flow never timed out")
	}
	for deadline := time.Now().Add(10 * time.Second); r.Stats().UDPOpen.Load() != 0 || st.Stats().UDPOpen != 0 || len(r.Flows()) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after the idle end: router UDPOpen %d, stack UDPOpen %d, %d flows in the table",
				r.Stats().UDPOpen.Load(), st.Stats().UDPOpen, len(r.Flows()))
		}
	}
}
