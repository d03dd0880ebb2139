package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/socks"
)

// FrontDoor lets a server that dials for its clients (the SOCKS server)
// obey the same rules as the flows a stack hands the router: each CONNECT
// and each UDP datagram is decided like a captured flow, tagged with the
// front door's inbound and the client and user of its request.
type FrontDoor struct {
	r  *Router
	in Inbound
	// request returns the client and user a call's ctx belongs to.
	request func(ctx context.Context) (client netip.AddrPort, user string)
}

// FrontDoor returns the dialer of a front door tagged with in. request
// tells, from the ctx of a DialContext or ListenPacket call, which client
// and which (authenticated) user the call serves; nil means unknown. in.User
// is not used.
func (r *Router) FrontDoor(in Inbound, request func(ctx context.Context) (client netip.AddrPort, user string)) *FrontDoor {
	return &FrontDoor{r: r, in: in, request: request}
}

func (fd *FrontDoor) flow(ctx context.Context) (flowIn, netip.AddrPort) {
	in := flowIn{typ: fd.in.Type, name: fd.in.Name}
	var client netip.AddrPort
	if fd.request != nil {
		client, in.user = fd.request(ctx)
	}
	return in, client
}

// DialContext decides and dials a connection to address ("host:port"; a
// name is the rules' host and is passed on unresolved, a fake IP becomes
// its name). A rejected destination fails with an error wrapping
// socks.ErrNotAllowed, which the SOCKS server answers with reply 0x02.
func (fd *FrontDoor) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return fd.DialContextChecked(ctx, network, address, nil)
}

// CheckedOutbound is the optional capability of an Outbound that connects
// to the destination itself (DIRECT) to vet the address it connects to:
// DialContextChecked calls check with each IP address and port it is about
// to connect to, after resolving a name, and fails with check's error
// instead of connecting.
type CheckedOutbound interface {
	DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error)
}

// DialContextChecked is DialContext for a server that vets the addresses
// its requests reach (socksserver.CheckedDialer): when the decided outbound
// connects to the destination itself (CheckedOutbound, DIRECT), check runs
// on the address it connects to. An outbound that carries the connection
// to a proxy does not reach the destination from this host, and check does
// not apply to it. A nil check is DialContext.
func (fd *FrontDoor) DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error) {
	dst, err := socks.ParseAddr(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	in, client := fd.flow(ctx)
	m, target := fd.r.metadata("tcp", in, client, dst, fd.r.reverse)
	d := fd.r.decide(ctx, m)
	fd.r.countFlow("tcp", in, d.name(), d)
	d.Hits.Hit()
	if d.Action != Proxy || d.Outbound == nil {
		fd.r.stats.Rejected.Add(1)
		return nil, &net.OpError{Op: "dial", Net: network, Addr: dst, Err: fmt.Errorf("rejected by rule %q: %w", d.Rule, socks.ErrNotAllowed)}
	}
	start := time.Now()
	var c net.Conn
	if co, ok := d.Outbound.(CheckedOutbound); ok && check != nil {
		c, err = co.DialContextChecked(ctx, network, target.String(), check)
	} else {
		c, err = d.Outbound.DialContext(ctx, network, target.String())
	}
	fd.r.dialed(d.Outbound.Name(), time.Since(start), err)
	return c, err
}

// ListenPacket opens the outbound side of one UDP association: a
// net.PacketConn whose WriteTo decides each datagram by its destination (a
// *net.UDPAddr, or a socks.Addr for a name, which is passed on unresolved)
// and sends it through that outbound's UDP session, opened on first use;
// ReadFrom returns the replies of every session, each from its sender (a
// *net.UDPAddr, or a socks.Addr when an upstream names it). A rejected
// datagram is dropped; WriteTo reports it with an error wrapping
// socks.ErrNotAllowed. ctx is the association's: it bounds the sessions.
func (fd *FrontDoor) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	in, client := fd.flow(ctx)
	ctx, cancel := context.WithCancel(ctx)
	p := &frontPacket{fd: fd, ctx: ctx, cancel: cancel, in: in, client: client,
		sessions: map[Outbound]PacketConn{}, replies: make(chan frontReply, 64), closed: make(chan struct{})}
	p.rd.init()
	return p, nil
}

// frontPacket is one UDP association of a front door.
type frontPacket struct {
	fd     *FrontDoor
	ctx    context.Context
	cancel context.CancelFunc
	in     flowIn
	client netip.AddrPort

	mu       sync.Mutex
	sessions map[Outbound]PacketConn
	isClosed bool
	wg       sync.WaitGroup

	replies chan frontReply
	closed  chan struct{}
	once    sync.Once
	rd      readDeadline
}

type frontReply struct {
	b    []byte
	from socks.Addr
}

// SendsToNames marks that WriteTo takes a name (a socks.Addr) and sends it
// on unresolved (socksserver.NamePacketConn).
func (p *frontPacket) SendsToNames() {}

// WriteTo implements net.PacketConn.
func (p *frontPacket) WriteTo(b []byte, addr net.Addr) (int, error) {
	dst, err := toSocksAddr(addr)
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: err}
	}
	m, target := p.fd.r.metadata("udp", p.in, p.client, dst, p.fd.r.reverse)
	d := p.fd.r.decide(p.ctx, m)
	if d.Action != Proxy || d.Outbound == nil {
		p.fd.r.stats.Rejected.Add(1)
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: fmt.Errorf("rejected by rule %q: %w", d.Rule, socks.ErrNotAllowed)}
	}
	pc, err := p.session(d.Outbound)
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: err}
	}
	if err := pc.Send(b, target); err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: err}
	}
	p.fd.r.stats.Up.Add(int64(len(b)))
	return len(b), nil
}

// toSocksAddr turns a WriteTo destination into a socks.Addr.
func toSocksAddr(addr net.Addr) (socks.Addr, error) {
	switch a := addr.(type) {
	case *net.UDPAddr:
		if a != nil {
			ap := a.AddrPort()
			return socks.Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}, nil
		}
	case socks.Addr:
		return a, nil
	case *socks.Addr:
		if a != nil {
			return *a, nil
		}
	}
	if addr == nil {
		return socks.Addr{}, errors.New("router: nil destination address")
	}
	return socks.ParseAddr(addr.String())
}

// session returns the association through out, opening it and its reader
// on first use.
func (p *frontPacket) session(out Outbound) (PacketConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isClosed {
		return nil, net.ErrClosed
	}
	if pc := p.sessions[out]; pc != nil {
		return pc, nil
	}
	pc, err := out.ListenPacket(p.ctx)
	if err != nil {
		if errors.Is(err, ErrUDPUnsupported) {
			p.fd.r.stats.Failed.Add(1)
		}
		return nil, err
	}
	p.sessions[out] = pc
	p.wg.Add(1)
	go p.read(out, pc)
	return pc, nil
}

// read hands the replies of one session to ReadFrom until it fails; the
// next datagram through that outbound then opens a new session.
func (p *frontPacket) read(out Outbound, pc PacketConn) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		if p.sessions[out] == pc {
			delete(p.sessions, out)
		}
		p.mu.Unlock()
		pc.Close()
	}()
	bp := relay.PacketBuf()
	defer relay.PutPacketBuf(bp)
	for {
		n, from, err := pc.Recv(*bp)
		if err != nil {
			return
		}
		select {
		case p.replies <- frontReply{b: append([]byte(nil), (*bp)[:n]...), from: from}:
			p.fd.r.stats.Down.Add(int64(n))
		case <-p.closed:
			return
		}
	}
}

// ReadFrom implements net.PacketConn.
func (p *frontPacket) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case <-p.closed:
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}
	default:
	}
	select {
	case r := <-p.replies:
		var from net.Addr = r.from
		if ap, ok := r.from.AddrPort(); ok {
			from = net.UDPAddrFromAddrPort(ap)
		}
		return copy(b, r.b), from, nil
	case <-p.closed:
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}
	case <-p.rd.wait():
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Err: os.ErrDeadlineExceeded}
	}
}

// Close implements net.PacketConn: it closes every session.
func (p *frontPacket) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.cancel()
		p.mu.Lock()
		p.isClosed = true
		for _, pc := range p.sessions {
			pc.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
		p.rd.stop()
	})
	return nil
}

// LocalAddr implements net.PacketConn; the sessions have addresses of
// their own, so there is none to give.
func (p *frontPacket) LocalAddr() net.Addr { return &net.UDPAddr{} }

// SetDeadline implements net.PacketConn: the read deadline only (a write
// never blocks for long: it hands the datagram to an outbound).
func (p *frontPacket) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (p *frontPacket) SetReadDeadline(t time.Time) error { p.rd.set(t); return nil }

// SetWriteDeadline implements net.PacketConn; writes do not wait.
func (p *frontPacket) SetWriteDeadline(time.Time) error { return nil }

// readDeadline is a read deadline as a channel closed when it passes.
type readDeadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{}
}

func (d *readDeadline) init() { d.ch = make(chan struct{}) }

func (d *readDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fired := false
	if d.timer != nil {
		fired = !d.timer.Stop() // its close may still be on its way
		d.timer = nil
	}
	select {
	case <-d.ch:
		fired = true
	default:
	}
	if fired { // a passed deadline needs a new channel
		d.ch = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	ch := d.ch
	if dur := time.Until(t); dur > 0 {
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	close(ch)
}

func (d *readDeadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func (d *readDeadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}
