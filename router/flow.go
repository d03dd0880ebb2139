package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/growstack"
	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/sniff"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/stack"
)

// tcpRequest is what the router needs of a stack.TCPRequest; an interface so
// the dispatch logic can be tested without a netstack.
type tcpRequest interface {
	Src() netip.AddrPort
	Dst() netip.AddrPort
	Accept() (stack.Conn, error)
	Reject()
}

// dropper is implemented by requests that can be dropped without any answer.
type dropper interface{ Drop() }

// unreacher is implemented by flows that can tell the app a destination
// refuses its datagrams (ICMP port unreachable).
type unreacher interface {
	Unreachable(dst netip.AddrPort) error
}

// udpFlow is what the router needs of a stack.UDPFlow.
type udpFlow interface {
	Src() netip.AddrPort
	ReadFrom(p []byte) (n int, dst netip.AddrPort, err error)
	WriteTo(p []byte, from netip.AddrPort) (int, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// readWaiter is implemented by flows and packet conns that can wait for a
// datagram without reading it (stack.UDPFlow): the relay then takes a
// buffer only while a datagram moves (relay.PacketOptions.UpWait).
type readWaiter interface{ WaitRead() error }

// polledListener is implemented by outbounds whose UDP sessions can have
// a Poller watch what would otherwise take a goroutine each (a SOCKS
// association's control connection).
type polledListener interface {
	ListenPacketPolled(ctx context.Context, p *relay.Poller) (PacketConn, error)
}

// listenPacket opens a UDP session on out, with the router's Poller when
// out takes one.
func (r *Router) listenPacket(ctx context.Context, out Outbound) (PacketConn, error) {
	if pl, ok := out.(polledListener); ok && r.cfg.Poller != nil {
		return pl.ListenPacketPolled(ctx, r.cfg.Poller)
	}
	return out.ListenPacket(ctx)
}

// HandleTCP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleTCP(ctx context.Context, req *stack.TCPRequest) { r.handleTCP(ctx, nil, req) }

// HandleUDP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleUDP(ctx context.Context, f *stack.UDPFlow) { r.handleUDP(ctx, nil, f) }

// isDNS reports whether traffic to dst is DNS the router answers itself.
func (r *Router) isDNS(dst netip.AddrPort) bool { return r.cfg.DNS != nil && r.cfg.DNS.Intercept(dst) }

func (r *Router) handleTCP(ctx context.Context, inb *Inbound, req tcpRequest) {
	f := r.openTCP(ctx, inb, req)
	if f == nil {
		return
	}
	if d, ok := req.(detacher); ok && r.relayTCPAsync(ctx, f, d) {
		return
	}
	if f.hold != nil {
		defer f.hold.release()
	}
	r.relayTCP(ctx, f)
}

// detacher is implemented by requests whose Handler may return before the
// flow ends (stack.TCPRequest.Detach).
type detacher interface {
	Detach(stop func()) (done func())
}

// openFlow is a TCP flow openTCP connected both ways, for relayTCP.
type openFlow struct {
	app  stack.Conn
	up   net.Conn
	e    *flowEntry
	hold *tcpHold // released when the flow ends; nil when nothing is held
	rec  FlowRecord
}

// openTCP decides req, dials its upstream and accepts it, and returns the
// flow to relay; nil when it was served otherwise (DNS, sniffed, refused
// or failed), its hold then released.
//
// Not inlined into handleTCP, on purpose: its frame is large (the
// metadata, the decision, the record: 1.3 KiB on amd64, go1.26), and the
// goroutine then waits for the flow's whole life in relay.Stream with
// only the small frames below relayTCP on its stack. The collector
// halves a goroutine's stack when it uses under a quarter of it (its
// frames plus an 800-byte guard): with this frame gone the waiting
// handler's 8 KiB stack shrinks to 4 KiB (relay.StreamOptions.Poller).
//
//go:noinline
func (r *Router) openTCP(ctx context.Context, inb *Inbound, req tcpRequest) (f *openFlow) {
	in := inb.tag(req.Src())
	r.stats.TCPTotal.Add(1)
	if !r.admit() {
		req.Reject()
		return nil
	}
	if r.isDNS(req.Dst()) {
		r.serveDNSStream(ctx, in, req)
		return nil
	}
	reverse := r.reverse
	var h *tcpHold
	if r.holds() {
		h = &tcpHold{r: r}
		defer func() {
			if f == nil {
				h.release()
			}
		}()
		reverse = h.acquire
	}
	m, target := r.metadata("tcp", in, req.Src(), ipAddr(req.Dst()), reverse)
	if r.wantSniff(m) {
		r.handleSniffedTCP(ctx, req, m)
		return nil
	}
	d := r.decide(ctx, m)
	rec := FlowRecord{Network: "tcp", Src: m.Src, Dst: m.Dst, Host: m.Host, InType: in.typ, InName: in.name, InUser: in.user,
		Process: m.Process, PID: m.PID, Outbound: d.name(), Rule: d.Rule, Start: time.Now()}
	r.countFlow("tcp", in, rec.Outbound, d)
	d.Hits.Hit()
	switch {
	case d.Action == RejectDrop:
		if dr, ok := req.(dropper); ok {
			dr.Drop()
		} else {
			req.Reject()
		}
		r.stats.Rejected.Add(1)
		r.finish(rec)
		return
	case d.Action == Reject || d.Outbound == nil:
		req.Reject()
		r.stats.Rejected.Add(1)
		r.finish(rec)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	up, err := d.Outbound.DialContext(dctx, "tcp", target.String())
	cancel()
	r.dialed(rec.Outbound, time.Since(rec.Start), err)
	if err != nil {
		req.Reject()
		r.stats.Failed.Add(1)
		rec.Err = err
		r.finish(rec)
		return
	}
	app, err := req.Accept()
	if err != nil {
		up.Close()
		r.stats.Failed.Add(1)
		rec.Err = err
		r.finish(rec)
		return
	}
	e := r.newEntry("tcp", in, req.Src())
	e.info.Start = rec.Start
	e.decided(m, d, req.Dst(), target)
	if a := up.RemoteAddr(); a != nil {
		e.info.Remote = a.String()
	}
	e.closeFn = func() {
		resetConn(app)
		up.Close()
	}
	return &openFlow{app: app, up: up, e: e, hold: h, rec: rec}
}

// relayTCP relays an open flow until it ends, then finishes its record.
func (r *Router) relayTCP(ctx context.Context, f *openFlow) {
	e := f.e
	r.table.add(e)
	r.stats.TCPOpen.Add(1)
	fctx, lf := r.track(ctx, e, nil)
	_, _, f.rec.Err = relay.Stream(fctx, f.app, f.up, relay.StreamOptions{
		Idle: r.cfg.TCPIdle, Up: e.upC, Down: e.downC, Activity: lf.clock, Poller: r.cfg.Poller,
	})
	r.untrack(e, lf, &f.rec)
	r.stats.TCPOpen.Add(-1)
	r.finishEntry(e, &f.rec)
}

// relayTCPAsync is relayTCP without a goroutine waiting for the flow: it
// starts the relay (relay.StreamAsync), detaches the handler from req,
// and the flow's end (its record, the table, the hold, req's done) runs
// from the relay's last direction. False when the relay needs a
// goroutine of its own (no Poller, or not a netstack conn or a system
// TCP stack's kernel socket to a kernel socket): nothing was started.
//
// What an idle flow holds is kept small: an asyncFlow, not the openFlow
// and its FlowRecord (the record is rebuilt from the table entry at the
// end), and no context: a detached flow's handler context has ended;
// ShedIdle, and the stack when it closes, close both connections, which
// ends the relay as a context would.
func (r *Router) relayTCPAsync(ctx context.Context, f *openFlow, req detacher) bool {
	if r.cfg.Poller == nil {
		return false
	}
	e := f.e
	a := &asyncFlow{r: r, e: e, hold: f.hold, dst: f.rec.Dst, process: f.rec.Process, pid: f.rec.PID}
	a.lf.clock = &a.lf.own
	a.lf.own.Store(time.Now().UnixNano())
	app, up := f.app, f.up
	a.lf.stop = func() {
		app.Close()
		up.Close()
	}
	a.lf.reset = e.closeFn
	r.table.add(e)
	r.stats.TCPOpen.Add(1)
	e.live.Store(&a.lf)
	a.done = req.Detach(a.lf.stop)
	opts := relay.StreamOptions{Idle: r.cfg.TCPIdle, Up: e.upC, Down: e.downC, Activity: a.lf.clock, Poller: r.cfg.Poller}
	ctx = context.WithoutCancel(ctx)
	if relay.StreamAsync(ctx, app, up, opts, a.end) {
		return true
	}
	// Not a pair the relay parks: relay here, and end as the relay would.
	a.end(relay.Stream(ctx, app, up, opts))
	return true
}

// asyncFlow is what a flow relayed by relayTCPAsync holds while it lasts.
type asyncFlow struct {
	r       *Router
	e       *flowEntry
	lf      liveFlow
	hold    *tcpHold
	done    func()
	dst     netip.AddrPort // the record's, as the rules saw it
	process string         // the rules' (the table may look it up later)
	pid     int
}

// end finishes the flow once the relay has ended, as relayTCP does.
func (a *asyncFlow) end(_, _ int64, err error) {
	e, r := a.e, a.r
	e.live.Store(nil)
	i := &e.info // the fields read here are set before the entry is added
	rec := FlowRecord{Network: i.Network, Src: i.Src, Dst: a.dst, Host: i.Host, InType: i.InType, InName: i.InName,
		InUser: i.InUser, Process: a.process, PID: a.pid, Outbound: i.Outbound, Rule: i.Rule, Start: i.Start, Err: err}
	if a.lf.shed.Load() {
		rec.Err = ErrShed
	}
	r.stats.TCPOpen.Add(-1)
	r.finishEntry(e, &rec)
	if a.hold != nil {
		a.hold.release()
	}
	a.done()
}

// finishEntry takes a flow's entry out of the table and finishes its
// record with the entry's id and bytes.
func (r *Router) finishEntry(e *flowEntry, rec *FlowRecord) {
	if r.table.remove(e) {
		rec.ID = e.info.ID
	}
	rec.Up, rec.Down = e.up.Load(), e.down.Load()
	if e.closedBy.Load() {
		rec.Err = ErrClosedByRequest
	}
	r.finish(*rec)
}

// serveDNSStream answers DNS over TCP to the DNS address in-process, as
// UDP queries are: a client retrying a truncated answer, or one that
// speaks TCP only (dig +tcp), gets its answer from the same server.
func (r *Router) serveDNSStream(ctx context.Context, in flowIn, req tcpRequest) {
	rec := FlowRecord{Network: "tcp", Src: req.Src(), Dst: req.Dst(), InType: in.typ, InName: in.name, InUser: in.user,
		Outbound: "DNS", Rule: "dns", Start: time.Now()}
	r.countFlow("tcp", in, "DNS", Decision{Rule: "dns"})
	app, err := req.Accept()
	if err != nil {
		r.stats.Failed.Add(1)
		rec.Err = err
		r.finish(rec)
		return
	}
	e := r.newEntry("tcp", in, req.Src())
	e.info.Start, e.info.Dst, e.info.Outbound, e.info.Rule, e.info.Target = rec.Start, req.Dst(), "DNS", "dns", req.Dst().String()
	e.closeFn = func() { resetConn(app) }
	r.table.add(e)
	r.stats.TCPOpen.Add(1)
	c := &countedConn{Conn: app, up: e.upC, down: e.downC}
	rec.Err = r.cfg.DNS.ServeStream(ctx, c)
	r.stats.TCPOpen.Add(-1)
	r.finishEntry(e, &rec)
}

// countedConn counts the bytes read from and written to a connection.
type countedConn struct {
	net.Conn
	up, down relay.Counter
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.up.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.down.Add(int64(n))
	return n, err
}

// handleUDP serves one app socket (full cone: one flow per app address and
// port, whatever it sends to). A flow whose first datagram is DNS to the
// intercepted address takes a short path: queries are answered one by one
// on this goroutine with one buffer, and no session is set up unless the
// socket also sends elsewhere. Otherwise every datagram is routed by its
// own rule: the first one's outbound opens the flow's UDP session, a
// datagram whose rule names another outbound gets an association of its
// own on that outbound (see udpSession.route), and rejected datagrams are
// dropped.
func (r *Router) handleUDP(ctx context.Context, inb *Inbound, f udpFlow) {
	r.stats.UDPTotal.Add(1)
	if !r.admit() {
		f.Close()
		return
	}
	r.stats.UDPOpen.Add(1)

	in := inb.tag(f.Src())
	bp := relay.PacketBuf()
	n, dst, err := f.ReadFrom(*bp)
	if err != nil {
		relay.PutPacketBuf(bp)
		f.Close()
		r.stats.UDPOpen.Add(-1)
		return
	}
	rec := FlowRecord{Network: "udp", Src: f.Src(), Dst: dst, InType: in.typ, InName: in.name, InUser: in.user, Start: time.Now()}
	e := r.newEntry("udp", in, f.Src())
	e.info.Start, e.info.Dst = rec.Start, dst
	// Closing the app's side ends the flow: the pumps' reads fail and
	// the relay closes the rest.
	e.closeFn = func() { f.Close() }
	if r.isDNS(dst) {
		rec.Outbound, rec.Rule = "DNS", "dns"
		r.countFlow("udp", in, "DNS", Decision{Rule: "dns"})
		e.info.Outbound, e.info.Rule, e.info.Target = "DNS", "dns", dst.String()
		r.table.add(e)
		if nf, ok := f.(notifiedFlow); ok {
			r.parkDNS(ctx, in, f, nf, e, &rec, bp, n, dst)
			return
		}
		var more bool
		n, dst, more, rec.Err = r.serveDNSDatagrams(ctx, f, e, *bp, n, dst)
		if !more {
			relay.PutPacketBuf(bp)
			f.Close()
			r.finishEntry(e, &rec)
			r.stats.UDPOpen.Add(-1)
			return
		}
		// The socket sends elsewhere too: from here on it is an
		// ordinary flow, with this datagram as its first.
	}
	r.serveUDP(ctx, in, f, e, &rec, bp, n, dst, nil)
}

// serveUDP relays a flow from its first datagram that is not DNS to an
// intercepted address (n bytes of *bp, sent to dst; bp goes back to the
// pool) to its end, and then drops UDPOpen. done, when not nil, is the
// flow's Detach done (a parked DNS flow that went on, see parkDNS),
// called once the flow has ended.
func (r *Router) serveUDP(ctx context.Context, in flowIn, f udpFlow, e *flowEntry, rec *FlowRecord, bp *[]byte, n int, dst netip.AddrPort, done func()) {
	detached := false // the flow outlives this call (relayUDPAsync)
	defer func() {
		if !detached {
			r.stats.UDPOpen.Add(-1)
			if done != nil {
				done()
			}
		}
	}()
	s := &udpSession{r: r, f: f, in: in, e: e, closed: make(chan struct{}), ready: make(chan struct{})}
	defer func() {
		if !detached {
			s.releaseHeld()
		}
	}()
	var pending []pendingDatagram
	if r.cfg.Sniff != nil && !r.isDNS(dst) {
		if m, _ := r.metadata("udp", in, f.Src(), ipAddr(dst), r.reverse); r.wantSniff(m) {
			var res sniff.Result
			res, pending = r.sniffUDP(f, (*bp)[:n], dst)
			r.log.Debug("sniffed", "net", "udp", "src", f.Src(), "dst", dst, "proto", res.Protocol, "verdict", res.Verdict,
				"host", res.Host, "datagrams", 1+len(pending), "wait", time.Since(rec.Start).Round(time.Microsecond))
			if res.Verdict == sniff.Found {
				// The name drives the rule of every datagram of the flow
				// to this destination.
				s.sniffHost, s.sniffDst = res.Host, dst
				rec.SniffHost = res.Host
				r.stats.Sniffed.Add(1)
			}
		}
	}
	first := s.route(ctx, (*bp)[:n], dst)
	relay.PutPacketBuf(bp)
	e.upC.Add(int64(first.n))
	if rec.Outbound == "" {
		rec.Outbound, rec.Rule, rec.Host, rec.Process, rec.PID = first.name, first.rule, first.host, first.process, first.pid
		r.countFlow("udp", in, first.name, first.d)
		first.d.Hits.Hit()
		if first.m != nil {
			e.decided(first.m, first.d, dst, first.target)
		}
	}
	if first.err != nil {
		rec.Err = first.err
		s.closeAll()
		r.finishEntry(e, rec)
		return
	}
	for _, d := range pending {
		if res := s.route(ctx, d.p, d.dst); res.sent {
			e.upC.Add(int64(res.n))
		}
	}
	r.table.add(e) // a DNS flow that went on is in already; add is idempotent
	idle := r.cfg.UDPIdle
	if rec.Dst.Port() == 53 {
		idle = r.cfg.DNSIdle
	}
	if r.relayUDPAsync(ctx, s, rec, idle, done) {
		detached = true
		return
	}
	up := func(p []byte) (int, error) {
		n, dst, err := f.ReadFrom(p)
		if err != nil {
			return 0, err
		}
		if res := s.route(ctx, p[:n], dst); !res.sent {
			return 0, nil
		}
		return n, nil
	}
	var pc PacketConn // the down pump's own copy of s.pc
	downSession := func() error {
		if pc == nil {
			select {
			case <-s.ready:
				pc = s.session()
			case <-s.closed:
				return net.ErrClosed
			}
		}
		return nil
	}
	down := func(p []byte) (int, error) {
		if err := downSession(); err != nil {
			return 0, err
		}
		return s.forwardReply(pc, p)
	}
	popts := relay.PacketOptions{Idle: idle, Up: e.upC, Down: e.downC, Activity: &s.activity}
	if w, ok := f.(readWaiter); ok {
		popts.UpWait = w.WaitRead
	}
	// The down pump waits for the session, then for a reply when its
	// outbound can say one is there without reading it.
	popts.DownWait = func() error {
		if err := downSession(); err != nil {
			return err
		}
		if w, ok := pc.(readWaiter); ok {
			return w.WaitRead()
		}
		return nil
	}
	pctx, lf := r.track(ctx, e, &s.activity)
	_, _, err := relay.Packets(pctx, popts, up, down, s.closeAll)
	s.extraWG.Wait()
	r.untrack(e, lf, rec)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		rec.Err = err
	}
	r.finishEntry(e, rec)
}

// notifiedFlow is implemented by flows that can say when a datagram is
// queued instead of a goroutine waiting for it, and let the handler
// return before they end (stack.UDPFlow).
type notifiedFlow interface {
	TryReadFrom(p []byte) (n int, dst netip.AddrPort, ok bool, err error)
	NotifyRead(fn func())
	WaitRead() error
	Detach() (done func())
}

// polledPacketConn is implemented by PacketConns on a kernel UDP socket
// that the router's Poller can watch while the flow idles (DIRECT, a
// SOCKS association).
type polledPacketConn interface {
	SyscallConn() (syscall.RawConn, error)
	// TryRecv is Recv that does not wait: ok is false when no datagram
	// waits. The read deadline does not apply to it.
	TryRecv(p []byte) (n int, from socks.Addr, ok bool, err error)
	SetReadDeadline(t time.Time) error
}

// relayUDPAsync relays s's flow with no goroutine while it idles
// (relay.PacketsAsync): the flow says when the app sent a datagram, the
// Poller when the session's socket has a reply, and each direction runs
// on a goroutine, with a buffer, only until it is drained. The handler
// detaches from the flow and returns; the flow's end (its record, the
// table, the holds) runs from the relay's last direction. False when it
// cannot (no Poller, a flow or session that cannot say when it is
// readable): nothing was started. done, when not nil, is the flow's
// Detach done already (see serveUDP).
//
// What an idle flow holds is kept small: no context of its own (the
// stack closing the flow, ShedIdle and the idle timer end it), and no
// goroutine.
func (r *Router) relayUDPAsync(ctx context.Context, s *udpSession, rec *FlowRecord, idle time.Duration, done func()) bool {
	if r.cfg.Poller == nil {
		return false
	}
	nf, ok := s.f.(notifiedFlow)
	if !ok {
		return false
	}
	ppc, ok := s.session().(polledPacketConn)
	if !ok {
		return false
	}
	rc, err := ppc.SyscallConn()
	if err != nil {
		return false
	}
	e := s.e
	a := &udpAsync{s: s, rec: *rec}
	a.lf.clock = &s.activity
	a.lf.stop = s.closeAll
	s.activity.Store(time.Now().UnixNano())
	e.live.Store(&a.lf)
	own := done == nil
	if own {
		done = nf.Detach()
	}
	a.done = done
	sides := relay.ParkedPackets{UpNotify: nf.NotifyRead, DownConn: rc,
		UpWait: nf.WaitRead, UpDeadline: s.f.SetReadDeadline, DownDeadline: ppc.SetReadDeadline}
	if cn, ok := ppc.(relay.CloseNotifier); ok {
		sides.DownClosed = cn.NotifyClose
	}
	up := func(p []byte) (int, bool, error) {
		n, dst, ok, err := nf.TryReadFrom(p)
		if err != nil || !ok {
			return 0, ok, err
		}
		if res := s.route(ctx, p[:n], dst); !res.sent {
			return 0, true, nil
		}
		return n, true, nil
	}
	down := func(p []byte) (int, bool, error) {
		n, from, ok, err := ppc.TryRecv(p)
		if err != nil || !ok {
			return 0, ok, err
		}
		src, ok := s.peers.source(from)
		if !ok {
			return 0, true, nil
		}
		if _, err := s.f.WriteTo(p[:n], src); err != nil {
			return 0, true, err
		}
		return n, true, nil
	}
	opts := relay.PacketOptions{Idle: idle, Up: e.upC, Down: e.downC, Activity: &s.activity, Poller: r.cfg.Poller}
	if relay.PacketsAsync(context.WithoutCancel(ctx), opts, sides, up, down, s.closeAll, a.end) {
		return true
	}
	// Not started (not on this system): nothing to undo but the detach.
	e.live.Store(nil)
	if own {
		done()
	}
	return false
}

// udpAsync is what a flow relayed by relayUDPAsync holds for its end.
type udpAsync struct {
	s    *udpSession
	rec  FlowRecord
	lf   liveFlow
	done func()
}

// end finishes the flow once the relay has ended, as handleUDP does.
func (a *udpAsync) end(_, _ int64, err error) {
	s := a.s
	r := s.r
	s.extraWG.Wait()
	r.untrack(s.e, &a.lf, &a.rec)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		a.rec.Err = err
	}
	r.finishEntry(s.e, &a.rec)
	s.releaseHeld()
	r.stats.UDPOpen.Add(-1)
	a.done()
}

// parkDNS serves a flow whose first datagram is DNS to an intercepted
// address (n bytes of *bp, sent to dst; bp goes back to the pool) with
// no goroutine between queries: it answers the query, detaches the
// handler from the flow and has the flow call back when the app sends
// again (dnsFlow.run answers on a goroutine of its own until the flow
// is drained). The flow ends after DNSIdle without a query, or when it
// closes; a datagram sent elsewhere makes it an ordinary flow from
// there on (serveUDP), as serveDNSDatagrams does.
func (r *Router) parkDNS(ctx context.Context, in flowIn, f udpFlow, nf notifiedFlow, e *flowEntry, rec *FlowRecord, bp *[]byte, n int, dst netip.AddrPort) {
	d := &dnsFlow{r: r, ctx: ctx, in: in, f: f, nf: nf, e: e, rec: *rec}
	d.wakeFn = d.wake
	d.done = nf.Detach()
	e.upC.Add(int64(n))
	r.answerDNS(ctx, f, (*bp)[:n], dst, e.downC)
	relay.PutPacketBuf(bp)
	d.last.Store(time.Now().UnixNano())
	d.mu.Lock()
	d.timer = time.AfterFunc(r.cfg.DNSIdle, d.checkIdle)
	d.mu.Unlock()
	nf.NotifyRead(d.wakeFn)
}

// dnsFlow is a parked DNS flow (parkDNS): what it holds between queries.
type dnsFlow struct {
	r      *Router
	ctx    context.Context
	in     flowIn
	f      udpFlow
	nf     notifiedFlow
	e      *flowEntry
	rec    FlowRecord
	done   func() // the flow's Detach done
	wakeFn func() // wake, made once
	last   atomic.Int64
	idled  atomic.Bool // the idle timer closed the flow

	mu    sync.Mutex
	timer *time.Timer // the idle timer; nil once stopped
}

// wake is the flow's notification: a datagram is queued or the flow
// closed. It runs on gVisor's packet path, which must not wait.
func (d *dnsFlow) wake() { go d.run() }

// run answers the queries queued, then parks again; it ends the flow
// when it is closed, and hands it to serveUDP at its first datagram
// sent elsewhere.
func (d *dnsFlow) run() {
	growstack.Grow()
	r := d.r
	bp := relay.PacketBuf()
	for {
		n, dst, ok, err := d.nf.TryReadFrom(*bp)
		if err != nil {
			relay.PutPacketBuf(bp)
			d.end(err)
			return
		}
		if !ok {
			relay.PutPacketBuf(bp)
			d.nf.NotifyRead(d.wakeFn)
			return
		}
		if !r.isDNS(dst) {
			d.stopTimer()
			if d.idled.Load() { // closing: the next read fails
				continue
			}
			r.serveUDP(d.ctx, d.in, d.f, d.e, &d.rec, bp, n, dst, d.done)
			return
		}
		d.last.Store(time.Now().UnixNano())
		d.e.upC.Add(int64(n))
		r.answerDNS(d.ctx, d.f, (*bp)[:n], dst, d.e.downC)
	}
}

// checkIdle is the idle timer: it closes a flow without a query for
// DNSIdle, which wakes it to end.
func (d *dnsFlow) checkIdle() {
	idle := d.r.cfg.DNSIdle
	if since := time.Since(time.Unix(0, d.last.Load())); since < idle {
		d.mu.Lock()
		if d.timer != nil {
			d.timer.Reset(idle - since)
		}
		d.mu.Unlock()
		return
	}
	d.idled.Store(true)
	d.f.Close()
}

func (d *dnsFlow) stopTimer() {
	d.mu.Lock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.mu.Unlock()
}

// end finishes the flow after its read failed with err, as handleUDP's
// DNS path does.
func (d *dnsFlow) end(err error) {
	d.stopTimer()
	switch {
	case d.idled.Load():
		d.rec.Err = relay.ErrIdle
	case errors.Is(err, net.ErrClosed):
		d.rec.Err = nil
	default:
		d.rec.Err = err
	}
	d.f.Close()
	d.r.finishEntry(d.e, &d.rec)
	d.r.stats.UDPOpen.Add(-1)
	d.done()
}

// serveDNSDatagrams answers the query q (n bytes of buf, sent to dst) and
// every further one the app sends to an intercepted address, counting
// both ways in e, until the flow has been idle for DNSIdle (err is then
// relay.ErrIdle) or ends. When the app sends a datagram elsewhere it
// returns it (n bytes of buf, to dst) with more set, for the caller to
// route.
func (r *Router) serveDNSDatagrams(ctx context.Context, f udpFlow, e *flowEntry, buf []byte, n int, dst netip.AddrPort) (_ int, _ netip.AddrPort, more bool, err error) {
	defer f.SetReadDeadline(time.Time{})
	for {
		e.upC.Add(int64(n))
		r.answerDNS(ctx, f, buf[:n], dst, e.downC)
		if ctx.Err() != nil {
			return 0, dst, false, nil
		}
		f.SetReadDeadline(time.Now().Add(r.cfg.DNSIdle))
		n, dst, err = f.ReadFrom(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return 0, dst, false, relay.ErrIdle
		case err != nil:
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			return 0, dst, false, err
		case !r.isDNS(dst):
			return n, dst, true, nil
		}
	}
}

// answerDNS answers one query the app sent to dst, from dst, counting the
// answer in down.
func (r *Router) answerDNS(ctx context.Context, f udpFlow, q []byte, dst netip.AddrPort, down relay.Counter) {
	// An error comes with a response to send all the same when the query
	// deserves one (SERVFAIL when every nameserver failed), so the app
	// fails fast instead of timing out.
	resp, err := r.cfg.DNS.Handle(ctx, q)
	if err != nil {
		r.log.Debug("dns", "src", f.Src(), "err", err)
	}
	if resp == nil {
		return
	}
	if _, err := f.WriteTo(resp, dst); err != nil {
		return
	}
	down.Add(int64(len(resp)))
}

type udpSession struct {
	r      *Router
	f      udpFlow
	in     flowIn
	e      *flowEntry    // the flow's entry: its counters
	out    Outbound      // the flow's outbound, set with pc; up pump only
	closed chan struct{} // closed by closeAll
	ready  chan struct{} // closed once pc is set
	once   sync.Once

	mu       sync.Mutex
	pc       PacketConn // nil until a datagram is proxied
	isClosed bool
	// extra holds one association per further outbound that datagrams of
	// this flow were routed to (an app socket talking to several
	// destinations whose rules differ); each has its own reader.
	extra    map[Outbound]PacketConn
	extraWG  sync.WaitGroup
	activity atomic.Int64 // the relay's idle clock, see relay.PacketOptions
	// sniffHost is the name read from the flow's QUIC Initials, for its
	// datagrams to sniffDst; set before the pumps start.
	sniffHost string
	sniffDst  netip.AddrPort

	peers replyPeers

	// held are the fake IPs the flow holds (Config.AcquireHost); only the
	// up pump's goroutine touches it, and handleUDP once the pumps are done.
	held map[netip.Addr]struct{}
}

// maxHeldPerFlow bounds the fake IPs one UDP flow holds; beyond it the
// flow's further fake destinations are looked up without a hold.
const maxHeldPerFlow = 64

// reverse maps a fake IP the flow sends to to its name, holding the
// mapping for the rest of the flow the first time.
func (s *udpSession) reverse(a netip.Addr) (string, bool) {
	r := s.r
	if !r.holds() {
		return r.reverse(a)
	}
	if _, ok := s.held[a]; ok || len(s.held) >= maxHeldPerFlow {
		return r.reverse(a)
	}
	host, ok := r.cfg.AcquireHost(a)
	if ok {
		if s.held == nil {
			s.held = make(map[netip.Addr]struct{})
		}
		s.held[a] = struct{}{}
	}
	return host, ok
}

// releaseHeld ends the flow's holds.
func (s *udpSession) releaseHeld() {
	for a := range s.held {
		s.r.cfg.ReleaseHost(a)
	}
	s.held = nil
}

// replyPeers maps the sources of replies back to the addresses the app
// sent to. A datagram the app sent to a fake IP leaves as a name, and the
// upstream answers it either from that name or, having resolved the name
// itself, from an address tunsocks never saw; the app must see the reply
// come from the fake IP and port it sent to, or a connected socket (a DNS
// client, QUIC) drops it. A reply from a name goes back to the fake IP of
// that name; a reply from an address the app did not send to itself, on a
// port it sent a name to, goes back to that name's fake IP (the last one
// sent to on that port, if several). Every other reply keeps its source
// (full cone).
type replyPeers struct {
	mu     sync.Mutex
	byName map[socks.Addr]netip.AddrPort // name:port sent to -> the app's destination
	byPort map[uint16]netip.AddrPort     // port -> the app's destination of the last name sent to on it
	direct map[netip.AddrPort]struct{}   // addresses the app sent to as they are, besides first
	// first is the first address the app sent to as it is: most flows
	// send to one, and a map of one costs a held flow ~400 bytes.
	first netip.AddrPort
}

// maxReplyPeers bounds each map of a flow's replyPeers; a full map starts
// over.
const maxReplyPeers = 256

// sent records that the app's datagram to appDst left for target.
func (p *replyPeers) sent(appDst netip.AddrPort, target socks.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if target.Name == "" {
		if appDst == p.first {
			return
		}
		if !p.first.IsValid() {
			p.first = appDst
			return
		}
		if _, ok := p.direct[appDst]; ok {
			return
		}
		if p.direct == nil || len(p.direct) >= maxReplyPeers {
			p.direct = make(map[netip.AddrPort]struct{})
		}
		p.direct[appDst] = struct{}{}
		return
	}
	if p.byName == nil || len(p.byName) >= maxReplyPeers {
		p.byName = make(map[socks.Addr]netip.AddrPort)
		p.byPort = make(map[uint16]netip.AddrPort)
	}
	p.byName[target] = appDst
	p.byPort[target.Port] = appDst
}

// source returns the address the app is shown a reply from as coming
// from; ok is false for a name it cannot be shown.
func (p *replyPeers) source(from socks.Addr) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if from.Name != "" {
		ap, ok := p.byName[from]
		if !ok {
			ap, ok = p.byName[socks.Addr{Name: strings.ToLower(strings.TrimSuffix(from.Name, ".")), Port: from.Port}]
		}
		return ap, ok
	}
	ap := netip.AddrPortFrom(from.IP.Unmap(), from.Port)
	if !ap.Addr().IsValid() {
		return ap, false
	}
	if p.byPort == nil {
		return ap, true
	}
	if _, ok := p.direct[ap]; ok || ap == p.first {
		return ap, true
	}
	if fake, ok := p.byPort[ap.Port()]; ok {
		return fake, true
	}
	return ap, true
}

type routeResult struct {
	sent       bool
	n          int
	name, rule string
	host       string
	process    string
	pid        int
	err        error
	// The decision and what it was made on, for the flow's first datagram
	// (m is nil for DNS answered in-process).
	d      Decision
	m      *rules.Metadata
	target socks.Addr
}

// route sends one datagram the way its decision says. Only the up pump's
// goroutine calls it (and handleUDP before the pumps start).
func (s *udpSession) route(ctx context.Context, p []byte, dst netip.AddrPort) routeResult {
	r := s.r
	if r.isDNS(dst) {
		r.answerDNS(ctx, s.f, p, dst, s.e.downC)
		return routeResult{sent: true, n: len(p), name: "DNS", rule: "dns", d: Decision{Rule: "dns"}}
	}
	m, target := r.metadata("udp", s.in, s.f.Src(), ipAddr(dst), s.reverse)
	if s.sniffHost != "" && dst == s.sniffDst && m.Host == "" {
		// The datagrams still go to the address: replies must come from
		// where the app sent them.
		m.Host, m.RealDst = s.sniffHost, true
	}
	d := r.decide(ctx, m)
	res := routeResult{name: d.name(), rule: d.Rule, host: m.Host, process: m.Process, pid: m.PID, d: d, m: m, target: target}
	if d.Action != Proxy || d.Outbound == nil {
		r.stats.Rejected.Add(1)
		if u, ok := s.f.(unreacher); ok && d.Action == Reject {
			if err := u.Unreachable(dst); err != nil {
				r.log.Debug("icmp unreachable not sent", "dst", dst, "err", err)
			}
		}
		if s.out == nil {
			res.err = errRejected
		}
		return res
	}
	if s.out == nil {
		start := time.Now()
		pc, err := r.listenPacket(ctx, d.Outbound)
		r.dialed(d.Outbound.Name(), time.Since(start), err)
		if err != nil {
			if errors.Is(err, ErrUDPUnsupported) {
				if _, seen := r.udpWarnOnce.LoadOrStore(d.Outbound.Name(), struct{}{}); !seen {
					r.log.Warn("outbound cannot carry UDP; its UDP flows are dropped", "outbound", d.Outbound.Name(), "err", err)
				}
			}
			r.stats.Failed.Add(1)
			res.err = err
			return res
		}
		if !s.setSession(pc) {
			pc.Close()
			res.err = net.ErrClosed
			return res
		}
		s.out = d.Outbound
	}
	pc := s.session()
	if d.Outbound != s.out {
		var err error
		if pc, err = s.extraSession(ctx, d.Outbound); err != nil {
			r.log.Debug("udp: no association for a further outbound of the flow", "src", s.f.Src(), "dst", dst,
				"outbound", d.Outbound.Name(), "err", err)
			return res
		}
	}
	s.peers.sent(dst, target)
	if err := pc.Send(p, target); err != nil {
		r.log.Debug("udp send failed", "dst", target, "err", err)
		return res
	}
	res.sent, res.n = true, len(p)
	return res
}

var errRejected = errors.New("rejected by rule")

// extraSession returns the flow's association through out, opening it (and
// its reader, which hands replies to the app) on first use. Only the up
// pump's goroutine calls it. A reader that ends (its association failed)
// removes its entry, so the next datagram opens a new one.
func (s *udpSession) extraSession(ctx context.Context, out Outbound) (PacketConn, error) {
	s.mu.Lock()
	pc := s.extra[out]
	s.mu.Unlock()
	if pc != nil {
		return pc, nil
	}
	start := time.Now()
	pc, err := s.r.listenPacket(ctx, out)
	s.r.dialed(out.Name(), time.Since(start), err)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		pc.Close()
		return nil, net.ErrClosed
	}
	if s.extra == nil {
		s.extra = make(map[Outbound]PacketConn)
	}
	s.extra[out] = pc
	s.extraWG.Add(1)
	s.mu.Unlock()
	s.r.log.Debug("udp flow uses a further outbound", "src", s.f.Src(), "outbound", out.Name())
	go s.readExtra(out, pc)
	return pc, nil
}

func (s *udpSession) readExtra(out Outbound, pc PacketConn) {
	defer s.extraWG.Done()
	defer func() {
		s.mu.Lock()
		if s.extra[out] == pc {
			delete(s.extra, out)
		}
		s.mu.Unlock()
		pc.Close()
	}()
	bp := relay.PacketBuf()
	defer relay.PutPacketBuf(bp)
	for {
		n, err := s.forwardReply(pc, *bp)
		if err != nil {
			return
		}
		if n > 0 {
			s.activity.Store(time.Now().UnixNano())
			s.e.downC.Add(int64(n))
		}
	}
}

// forwardReply receives one datagram from pc and hands it to the app from
// the address the app sent to (see replyPeers); 0 and no error for a reply
// the app cannot be shown a source for.
func (s *udpSession) forwardReply(pc PacketConn, p []byte) (int, error) {
	n, from, err := pc.Recv(p)
	if err != nil {
		return 0, err
	}
	src, ok := s.peers.source(from)
	if !ok {
		return 0, nil
	}
	if _, err := s.f.WriteTo(p[:n], src); err != nil {
		return 0, err
	}
	return n, nil
}

func (s *udpSession) session() PacketConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pc
}

// setSession installs pc unless the session is already closed.
func (s *udpSession) setSession(pc PacketConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return false
	}
	s.pc = pc
	close(s.ready)
	return true
}

func (s *udpSession) closeAll() {
	s.once.Do(func() {
		close(s.closed)
		s.f.Close()
		s.mu.Lock()
		s.isClosed = true
		if s.pc != nil {
			s.pc.Close()
		}
		for _, pc := range s.extra {
			pc.Close()
		}
		s.mu.Unlock()
	})
}
