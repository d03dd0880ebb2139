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
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
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

// HandleTCP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleTCP(ctx context.Context, req *stack.TCPRequest) { r.handleTCP(ctx, nil, req) }

// HandleUDP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleUDP(ctx context.Context, f *stack.UDPFlow) { r.handleUDP(ctx, nil, f) }

// isDNS reports whether traffic to dst is DNS the router answers itself.
func (r *Router) isDNS(dst netip.AddrPort) bool { return r.cfg.DNS != nil && r.cfg.DNS.Intercept(dst) }

func (r *Router) handleTCP(ctx context.Context, inb *Inbound, req tcpRequest) {
	in := inb.tag(req.Src())
	r.stats.TCPTotal.Add(1)
	if r.isDNS(req.Dst()) {
		r.serveDNSStream(ctx, in, req)
		return
	}
	m, target := r.metadata("tcp", in, req.Src(), ipAddr(req.Dst()))
	if r.wantSniff(m) {
		r.handleSniffedTCP(ctx, req, m)
		return
	}
	d := r.decide(ctx, m)
	rec := FlowRecord{Network: "tcp", Src: m.Src, Dst: m.Dst, Host: m.Host, InType: in.typ, InName: in.name, InUser: in.user,
		Outbound: d.name(), Rule: d.Rule, Start: time.Now()}
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
	r.stats.TCPOpen.Add(1)
	rec.Up, rec.Down, rec.Err = relay.Stream(ctx, app, up, relay.StreamOptions{
		Idle: r.cfg.TCPIdle, Up: &r.stats.Up, Down: &r.stats.Down,
	})
	r.stats.TCPOpen.Add(-1)
	r.finish(rec)
}

// serveDNSStream answers DNS over TCP to the DNS address in-process, as
// UDP queries are: a client retrying a truncated answer, or one that
// speaks TCP only (dig +tcp), gets its answer from the same server.
func (r *Router) serveDNSStream(ctx context.Context, in flowIn, req tcpRequest) {
	rec := FlowRecord{Network: "tcp", Src: req.Src(), Dst: req.Dst(), InType: in.typ, InName: in.name, InUser: in.user,
		Outbound: "DNS", Rule: "dns", Start: time.Now()}
	app, err := req.Accept()
	if err != nil {
		r.stats.Failed.Add(1)
		rec.Err = err
		r.finish(rec)
		return
	}
	r.stats.TCPOpen.Add(1)
	c := &countedConn{Conn: app, up: &r.stats.Up, down: &r.stats.Down}
	rec.Err = r.cfg.DNS.ServeStream(ctx, c)
	r.stats.TCPOpen.Add(-1)
	rec.Up, rec.Down = c.read.Load(), c.written.Load()
	r.finish(rec)
}

// countedConn counts the bytes read from and written to a connection.
type countedConn struct {
	net.Conn
	up, down      *atomic.Int64 // the router's counters
	read, written atomic.Int64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	c.up.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
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
	r.stats.UDPOpen.Add(1)
	defer r.stats.UDPOpen.Add(-1)

	in := inb.tag(f.Src())
	bp := relay.PacketBuf()
	n, dst, err := f.ReadFrom(*bp)
	if err != nil {
		relay.PutPacketBuf(bp)
		f.Close()
		return
	}
	rec := FlowRecord{Network: "udp", Src: f.Src(), Dst: dst, InType: in.typ, InName: in.name, InUser: in.user, Start: time.Now()}
	var dnsUp, dnsDown int64
	if r.isDNS(dst) {
		rec.Outbound, rec.Rule = "DNS", "dns"
		var more bool
		n, dst, more, dnsUp, dnsDown, rec.Err = r.serveDNSDatagrams(ctx, f, *bp, n, dst)
		if !more {
			relay.PutPacketBuf(bp)
			f.Close()
			rec.Up, rec.Down = dnsUp, dnsDown
			r.finish(rec)
			return
		}
		// The socket sends elsewhere too: from here on it is an
		// ordinary flow, with this datagram as its first.
	}
	s := &udpSession{r: r, f: f, in: in, closed: make(chan struct{}), ready: make(chan struct{})}
	var pending []pendingDatagram
	if r.cfg.Sniff != nil && !r.isDNS(dst) {
		if m, _ := r.metadata("udp", in, f.Src(), ipAddr(dst)); r.wantSniff(m) {
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
	if rec.Outbound == "" {
		rec.Outbound, rec.Rule, rec.Host = first.name, first.rule, first.host
	}
	if first.err != nil {
		rec.Err = first.err
		rec.Up, rec.Down = dnsUp, dnsDown
		s.closeAll()
		r.finish(rec)
		return
	}
	for _, d := range pending {
		if res := s.route(ctx, d.p, d.dst); res.sent {
			first.n += res.n
		}
	}
	idle := r.cfg.UDPIdle
	if rec.Dst.Port() == 53 {
		idle = r.cfg.DNSIdle
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
	down := func(p []byte) (int, error) {
		if pc == nil {
			select {
			case <-s.ready:
				pc = s.session()
			case <-s.closed:
				return 0, net.ErrClosed
			}
		}
		return s.forwardReply(pc, p)
	}
	var u, d int64
	u, d, err = relay.Packets(ctx, relay.PacketOptions{Idle: idle, Up: &r.stats.Up, Down: &r.stats.Down, Activity: &s.activity}, up, down, s.closeAll)
	s.extraWG.Wait()
	rec.Up, rec.Down = dnsUp+u+int64(first.n), dnsDown+d+s.dnsDown+s.extraDown.Load()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		rec.Err = err
	}
	r.finish(rec)
}

// serveDNSDatagrams answers the query q (n bytes of buf, sent to dst) and
// every further one the app sends to an intercepted address, until the
// flow has been idle for DNSIdle (err is then relay.ErrIdle) or ends. When
// the app sends a datagram elsewhere it returns it (n bytes of buf, to dst)
// with more set, for the caller to route.
func (r *Router) serveDNSDatagrams(ctx context.Context, f udpFlow, buf []byte, n int, dst netip.AddrPort) (_ int, _ netip.AddrPort, more bool, up, down int64, err error) {
	defer f.SetReadDeadline(time.Time{})
	for {
		up += int64(n)
		r.stats.Up.Add(int64(n))
		down += r.answerDNS(ctx, f, buf[:n], dst)
		if ctx.Err() != nil {
			return 0, dst, false, up, down, nil
		}
		f.SetReadDeadline(time.Now().Add(r.cfg.DNSIdle))
		n, dst, err = f.ReadFrom(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return 0, dst, false, up, down, relay.ErrIdle
		case err != nil:
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			return 0, dst, false, up, down, err
		case !r.isDNS(dst):
			return n, dst, true, up, down, nil
		}
	}
}

// answerDNS answers one query the app sent to dst, from dst; it returns the
// bytes of the answer.
func (r *Router) answerDNS(ctx context.Context, f udpFlow, q []byte, dst netip.AddrPort) int64 {
	// An error comes with a response to send all the same when the query
	// deserves one (SERVFAIL when every nameserver failed), so the app
	// fails fast instead of timing out.
	resp, err := r.cfg.DNS.Handle(ctx, q)
	if err != nil {
		r.log.Debug("dns", "src", f.Src(), "err", err)
	}
	if resp == nil {
		return 0
	}
	if _, err := f.WriteTo(resp, dst); err != nil {
		return 0
	}
	r.stats.Down.Add(int64(len(resp)))
	return int64(len(resp))
}

type udpSession struct {
	r      *Router
	f      udpFlow
	in     flowIn
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
	extra     map[Outbound]PacketConn
	extraWG   sync.WaitGroup
	extraDown atomic.Int64
	activity  atomic.Int64 // the relay's idle clock, see relay.PacketOptions
	// dnsDown counts answers written by the in-process DNS handler; only the
	// up pump's goroutine touches it.
	dnsDown int64
	// sniffHost is the name read from the flow's QUIC Initials, for its
	// datagrams to sniffDst; set before the pumps start.
	sniffHost string
	sniffDst  netip.AddrPort

	peers replyPeers
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
	direct map[netip.AddrPort]struct{}   // addresses the app sent to as they are
}

// maxReplyPeers bounds each map of a flow's replyPeers; a full map starts
// over.
const maxReplyPeers = 256

// sent records that the app's datagram to appDst left for target.
func (p *replyPeers) sent(appDst netip.AddrPort, target socks.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if target.Name == "" {
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
	if _, ok := p.direct[ap]; ok {
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
	err        error
}

// route sends one datagram the way its decision says. Only the up pump's
// goroutine calls it (and handleUDP before the pumps start).
func (s *udpSession) route(ctx context.Context, p []byte, dst netip.AddrPort) routeResult {
	r := s.r
	if r.isDNS(dst) {
		s.dnsDown += r.answerDNS(ctx, s.f, p, dst)
		return routeResult{sent: true, n: len(p), name: "DNS", rule: "dns"}
	}
	m, target := r.metadata("udp", s.in, s.f.Src(), ipAddr(dst))
	if s.sniffHost != "" && dst == s.sniffDst && m.Host == "" {
		// The datagrams still go to the address: replies must come from
		// where the app sent them.
		m.Host, m.RealDst = s.sniffHost, true
	}
	d := r.decide(ctx, m)
	res := routeResult{name: d.name(), rule: d.Rule, host: m.Host}
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
		pc, err := d.Outbound.ListenPacket(ctx)
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
	pc, err := out.ListenPacket(ctx)
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
			s.extraDown.Add(int64(n))
			s.r.stats.Down.Add(int64(n))
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
