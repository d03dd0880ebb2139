package router

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
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
	Close() error
}

// HandleTCP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleTCP(ctx context.Context, req *stack.TCPRequest) { r.handleTCP(ctx, nil, req) }

// HandleUDP implements stack.Handler; the flow carries no inbound (see Handler).
func (r *Router) HandleUDP(ctx context.Context, f *stack.UDPFlow) { r.handleUDP(ctx, nil, f) }

func (r *Router) handleTCP(ctx context.Context, inb *Inbound, req tcpRequest) {
	in := inb.tag(req.Src())
	m, dst := r.metadata("tcp", in, req.Src(), req.Dst())
	d := r.decide(m)
	rec := FlowRecord{Network: "tcp", Src: m.Src, Dst: m.Dst, Host: m.Host, InType: in.typ, InName: in.name, InUser: in.user,
		Outbound: d.name(), Rule: d.Rule, Start: time.Now()}
	r.stats.TCPTotal.Add(1)
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
	up, err := d.Outbound.DialContext(dctx, "tcp", dst)
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

// handleUDP serves one app socket (full cone: one flow per app address and
// port, whatever it sends to). Every datagram is routed by its own rule: the
// first one's outbound opens the flow's UDP session, a datagram whose rule
// names another outbound gets an association of its own on that outbound
// (see udpSession.route), and rejected datagrams are dropped.
func (r *Router) handleUDP(ctx context.Context, inb *Inbound, f udpFlow) {
	r.stats.UDPTotal.Add(1)
	r.stats.UDPOpen.Add(1)
	defer r.stats.UDPOpen.Add(-1)

	buf := make([]byte, 65535)
	n, dst, err := f.ReadFrom(buf)
	if err != nil {
		f.Close()
		return
	}
	in := inb.tag(f.Src())
	s := &udpSession{r: r, f: f, in: in, closed: make(chan struct{}), ready: make(chan struct{})}
	rec := FlowRecord{Network: "udp", Src: f.Src(), Dst: dst, InType: in.typ, InName: in.name, InUser: in.user, Start: time.Now()}
	idle := r.cfg.UDPIdle
	if dst.Port() == 53 {
		idle = r.cfg.DNSIdle
	}
	first := s.route(ctx, buf[:n], dst)
	rec.Outbound, rec.Rule, rec.Host = first.name, first.rule, first.host
	if first.err != nil {
		rec.Err = first.err
		s.closeAll()
		r.finish(rec)
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
	rec.Up, rec.Down = u+int64(first.n), d+s.dnsDown+s.extraDown.Load()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		rec.Err = err
	}
	r.finish(rec)
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
	if r.cfg.DNS != nil && r.cfg.DNS.Intercept(dst) {
		// An error comes with a response to send all the same when the
		// query deserves one (SERVFAIL when every nameserver failed), so
		// the app fails fast instead of timing out.
		resp, err := r.cfg.DNS.Handle(ctx, p)
		if err != nil {
			r.log.Debug("dns", "src", s.f.Src(), "err", err)
		}
		if resp != nil {
			if _, err := s.f.WriteTo(resp, dst); err == nil {
				s.dnsDown += int64(len(resp))
			}
		}
		return routeResult{sent: true, n: len(p), name: "DNS", rule: "dns"}
	}
	m, target := r.metadata("udp", s.in, s.f.Src(), dst)
	d := r.decide(m)
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
	buf := make([]byte, 65535)
	for {
		n, err := s.forwardReply(pc, buf)
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

// forwardReply receives one datagram from pc and hands it to the app with
// its source; 0 and no error for a reply the app cannot be shown a source
// for.
func (s *udpSession) forwardReply(pc PacketConn, p []byte) (int, error) {
	n, from, err := pc.Recv(p)
	if err != nil {
		return 0, err
	}
	if !from.IsValid() {
		return 0, nil
	}
	if _, err := s.f.WriteTo(p[:n], from); err != nil {
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
