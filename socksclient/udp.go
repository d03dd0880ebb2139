package socksclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/socks"
)

// ListenPacket opens a UDP association (the SOCKS5 UDP ASSOCIATE command).
// The association lives as long as its control connection: when the server
// closes that, reads and writes on the UDPConn fail with an error wrapping
// net.ErrClosed. ctx bounds only the setup.
//
// It fails with an error wrapping ErrUDPUnsupported for SOCKS4, for a Client
// that reaches its server through another Client (a chain), and when the
// server answers "command not supported".
func (c *Client) ListenPacket(ctx context.Context) (*UDPConn, error) {
	return c.ListenPacketPolled(ctx, nil)
}

// ListenPacketPolled is ListenPacket with the association's control
// connection watched by p (its end closes the association) instead of by
// a goroutine of its own, so an idle association costs no goroutine for
// it. A nil p, or a Poller that cannot watch (not Linux, closed), means a
// goroutine.
func (c *Client) ListenPacketPolled(ctx context.Context, p *relay.Poller) (*UDPConn, error) {
	const op = "socks udp associate"
	if _, ok := c.forward.(*Client); ok {
		return nil, c.opError(op, "udp", nil, fmt.Errorf("%w through a chain of SOCKS servers: the last server's UDP relay cannot be reached through the earlier ones", ErrUDPUnsupported))
	}
	if c.version != socks.Version5 {
		return nil, c.opError(op, "udp", nil, fmt.Errorf("%w: SOCKS4 has no UDP; use a socks5:// proxy URL", ErrUDPUnsupported))
	}
	// The client's own UDP address is not known before the relay is (the
	// socket is connected to it), so the request carries 0.0.0.0:0, which
	// RFC 1928 allows: the server takes the first datagram's source.
	ctrl, bound, err := c.request(ctx, "udp", socks.CmdUDPAssociate, socks.Addr{IP: netip.IPv4Unspecified()})
	if err != nil {
		var re *socks.ReplyError
		var oe *net.OpError
		if errors.As(err, &re) && re.Code == socks.CommandNotSupported && errors.As(err, &oe) {
			oe.Err = fmt.Errorf("%w: %w", ErrUDPUnsupported, oe.Err)
		}
		return nil, err
	}
	if bound.Port == 0 {
		ctrl.Close()
		return nil, c.opError(op, "udp", nil, fmt.Errorf("socks5: server gave UDP relay address %s with port 0", bound))
	}
	relay := c.boundAddr(ctrl, bound)
	pc, err := c.forward.DialContext(ctx, "udp", relay)
	if err != nil {
		ctrl.Close()
		return nil, c.opError("dial", "udp", netAddr("udp", relay), fmt.Errorf("UDP relay: %w", err))
	}
	u := &UDPConn{
		ctrl:     ctrl,
		pc:       pc,
		relay:    netAddr("udp", relay),
		frag:     c.UDPFragmentSize,
		ctrlDone: make(chan struct{}),
		reasm:    socks.Reassembler{Timeout: c.UDPReassemblyTimeout},
	}
	u.startWatch(p)
	return u, nil
}

// UDPConn is a UDP association: a net.PacketConn whose datagrams travel
// through the server's UDP relay. ReadFrom returns the sender's address (a
// *net.UDPAddr, or a socks.Addr if the server names the sender); WriteTo
// takes a *net.UDPAddr, a socks.Addr or *socks.Addr, or any net.Addr whose
// String is "host:port" (a name in it is sent as a name, never resolved).
type UDPConn struct {
	ctrl  net.Conn // the TCP control connection
	pc    net.Conn // UDP socket connected to the relay
	relay net.Addr
	frag  int

	ctrlDone  chan struct{} // closed when the watch has ended (endWatch)
	ctrlEnded atomic.Bool   // the control connection has ended
	closing   atomic.Bool   // Close was called
	once      sync.Once
	doneOnce  sync.Once

	// The control connection's watch on a Poller (see startWatch).
	poller    *relay.Poller
	ctrlRC    syscall.RawConn
	cmu       sync.Mutex
	stopWatch func() // the Poller registration; nil while none
	goWatch   bool   // a goroutine watches instead (watch)
	onEnd     func() // NotifyEnd's, until called

	rmu   sync.Mutex      // serialises ReadFrom: rbuf and the reassembler
	rbuf  []byte          // for a ReadFrom into less than maxUDPRead; made on first use
	prc   syscall.RawConn // pc's, made by TryReadFrom's first call
	reasm socks.Reassembler

	wmu  sync.Mutex
	wbuf []byte
}

// errAssocEnded is the cause of reads and writes after the server closed the
// control connection.
var errAssocEnded = fmt.Errorf("socks5: UDP association ended: the server closed the control connection: %w", net.ErrClosed)

// watch waits for the control connection to end (the server sends nothing
// on it) and then closes the UDP socket, which wakes a blocked ReadFrom.
func (u *UDPConn) watch() {
	defer u.endWatch()
	var b [512]byte
	for {
		if _, err := u.ctrl.Read(b[:]); err != nil {
			break
		}
	}
	u.ctrlEnded.Store(true)
	u.pc.Close()
	u.ended()
}

func (u *UDPConn) endWatch() { u.doneOnce.Do(func() { close(u.ctrlDone) }) }

// startWatch watches the control connection on p when it can, else on a
// goroutine (watch).
func (u *UDPConn) startWatch(p *relay.Poller) {
	if p != nil {
		if sc, ok := u.ctrl.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				u.poller, u.ctrlRC = p, rc
				if u.arm() {
					return
				}
			}
		}
	}
	u.cmu.Lock()
	u.goWatch = true
	u.cmu.Unlock()
	go u.watch()
}

// arm registers ctrlReadable with the Poller; false when it cannot.
func (u *UDPConn) arm() bool {
	u.cmu.Lock()
	defer u.cmu.Unlock()
	if u.closing.Load() {
		return true // Close ends the watch
	}
	stop, err := u.poller.Watch(u.ctrlRC, u.ctrlReadable)
	if err != nil {
		return false
	}
	u.stopWatch = stop
	return true
}

// ctrlReadable runs on the Poller's goroutine when the control connection
// is readable: it reads what is there without blocking; its end (or an
// error) ends the association, stray bytes are dropped and the watch goes
// on. The Poller closing moves the watch to a goroutine.
func (u *UDPConn) ctrlReadable() {
	var b [512]byte
	var n int
	var rerr error
	err := u.ctrlRC.Read(func(fd uintptr) bool {
		n, rerr = readNonblock(fd, b[:])
		return true
	})
	if err == nil && (n > 0 || isWouldBlock(rerr)) {
		if u.arm() {
			return
		}
		u.cmu.Lock()
		u.stopWatch, u.goWatch = nil, true
		u.cmu.Unlock()
		go u.watch()
		return
	}
	u.ctrlEnded.Store(true)
	u.pc.Close()
	u.ended()
	u.endWatch()
}

func (u *UDPConn) ioError(op string, addr net.Addr, err error) error {
	if !u.closing.Load() && u.ctrlEnded.Load() {
		err = errAssocEnded
	}
	return &net.OpError{Op: op, Net: "udp", Source: u.pc.LocalAddr(), Addr: addr, Err: err}
}

// ReadFrom reads one datagram's payload into b and returns its sender.
// Fragmented datagrams are reassembled; malformed ones are dropped. A
// payload longer than b is truncated, as on a plain UDP socket.
func (u *UDPConn) ReadFrom(b []byte) (int, net.Addr, error) {
	u.rmu.Lock()
	defer u.rmu.Unlock()
	// Each round blocks in Read, so the loop is bounded in time by the read
	// deadline; it only goes round again for a dropped or partial datagram.
	// A buffer that holds any datagram takes it, header and all, and the
	// payload moves to its front: no buffer of the association's own
	// (64 KiB) for the common caller.
	rbuf := b
	if len(b) < maxUDPRead {
		if u.rbuf == nil {
			u.rbuf = make([]byte, maxUDPRead)
		}
		rbuf = u.rbuf
	}
	for {
		n, err := u.pc.Read(rbuf)
		if err != nil {
			return 0, nil, u.ioError("read", u.relay, err)
		}
		frag, from, payload, err := socks.ParseUDP(rbuf[:n])
		if err != nil {
			continue
		}
		full, from, ok := u.reasm.Add(frag, from, payload)
		if !ok {
			continue
		}
		return copy(b, full), udpAddr(from), nil
	}
}

// TryReadFrom is ReadFrom that does not wait: ok is false, and nothing
// was returned, when no whole datagram is waiting (fragments and
// malformed datagrams waiting are consumed). b must hold maxUDPRead
// bytes (a relay's packet buffer): the datagram is read into it, header
// and all. Only on Linux; elsewhere it fails with errors.ErrUnsupported.
func (u *UDPConn) TryReadFrom(b []byte) (n int, from socks.Addr, ok bool, err error) {
	if len(b) < maxUDPRead {
		return 0, socks.Addr{}, false, fmt.Errorf("socksclient: TryReadFrom needs a buffer of %d bytes, got %d", maxUDPRead, len(b))
	}
	u.rmu.Lock()
	defer u.rmu.Unlock()
	if u.prc == nil {
		rc, err := u.rawConn()
		if err != nil {
			return 0, socks.Addr{}, false, u.ioError("read", u.relay, err)
		}
		u.prc = rc
	}
	rc := u.prc
	for {
		m, _, got, err := relay.RecvNow(rc, b)
		if err != nil {
			return 0, socks.Addr{}, false, u.ioError("read", u.relay, err)
		}
		if !got {
			return 0, socks.Addr{}, false, nil
		}
		frag, from, payload, err := socks.ParseUDP(b[:m])
		if err != nil {
			continue
		}
		full, from, done := u.reasm.Add(frag, from, payload)
		if !done {
			continue
		}
		return copy(b, full), from, true, nil
	}
}

// rawConn is the UDP socket's, for TryReadFrom and SyscallConn.
func (u *UDPConn) rawConn() (syscall.RawConn, error) {
	sc, ok := u.pc.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// SyscallConn returns the raw connection of the UDP socket the datagrams
// travel on, for a Poller to watch it (relay.PacketsAsync).
func (u *UDPConn) SyscallConn() (syscall.RawConn, error) { return u.rawConn() }

// NotifyEnd calls fn once when the server ends the association (it
// closed the control connection; the UDP socket is closed then, which
// leaves a Poller's set silently), or when Close ends it. fn must not
// block.
func (u *UDPConn) NotifyEnd(fn func()) {
	u.cmu.Lock()
	if !u.ctrlEnded.Load() {
		u.onEnd = fn
		u.cmu.Unlock()
		return
	}
	u.cmu.Unlock()
	fn()
}

// ended runs NotifyEnd's function once the association ended.
func (u *UDPConn) ended() {
	u.cmu.Lock()
	fn := u.onEnd
	u.onEnd = nil
	u.cmu.Unlock()
	if fn != nil {
		fn()
	}
}

// maxUDPRead is the largest UDP payload a socket returns: a SOCKS header
// and any datagram fit.
const maxUDPRead = 65535

func udpAddr(a socks.Addr) net.Addr {
	if ap, ok := a.AddrPort(); ok {
		return net.UDPAddrFromAddrPort(ap)
	}
	return a
}

// WriteTo sends p to addr through the relay, split into fragments when the
// Client's UDPFragmentSize asks for it.
func (u *UDPConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	dst, err := socksAddr(addr)
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: u.pc.LocalAddr(), Addr: addr, Err: err}
	}
	if u.frag > 0 && len(p) > u.frag {
		dgrams, err := socks.Fragment(dst, p, u.frag)
		if err != nil {
			return 0, &net.OpError{Op: "write", Net: "udp", Source: u.pc.LocalAddr(), Addr: addr, Err: err}
		}
		for _, d := range dgrams {
			if _, err := u.pc.Write(d); err != nil {
				return 0, u.ioError("write", addr, err)
			}
		}
		return len(p), nil
	}
	u.wmu.Lock()
	defer u.wmu.Unlock()
	u.wbuf, err = socks.AppendUDPHeader(u.wbuf[:0], 0, dst)
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: u.pc.LocalAddr(), Addr: addr, Err: err}
	}
	u.wbuf = append(u.wbuf, p...)
	if _, err := u.pc.Write(u.wbuf); err != nil {
		return 0, u.ioError("write", addr, err)
	}
	return len(p), nil
}

// socksAddr converts a destination for WriteTo without resolving names.
func socksAddr(addr net.Addr) (socks.Addr, error) {
	switch a := addr.(type) {
	case nil:
		return socks.Addr{}, errors.New("socksclient: nil destination address")
	case *net.UDPAddr:
		if a == nil {
			return socks.Addr{}, errors.New("socksclient: nil destination address")
		}
		if a.Zone != "" {
			return socks.Addr{}, fmt.Errorf("socksclient: zoned IPv6 address %s cannot be sent over SOCKS", a)
		}
		ap := a.AddrPort()
		if !ap.Addr().IsValid() {
			return socks.Addr{}, fmt.Errorf("socksclient: destination %s has no IP", a)
		}
		return socks.AddrFromAddrPort(ap), nil
	case socks.Addr:
		return checkAddr(a)
	case *socks.Addr:
		if a == nil {
			return socks.Addr{}, errors.New("socksclient: nil destination address")
		}
		return checkAddr(*a)
	}
	return socks.ParseAddr(addr.String())
}

// checkAddr checks a destination given as a socks.Addr as ParseAddr would.
func checkAddr(a socks.Addr) (socks.Addr, error) {
	switch {
	case a.Name != "" && a.IP.IsValid():
		return socks.Addr{}, fmt.Errorf("socksclient: destination has both a name %q and an IP %s", a.Name, a.IP)
	case a.Name != "" && len(a.Name) > socks.MaxDomainLen:
		return socks.Addr{}, fmt.Errorf("socksclient: destination name is %d bytes, at most %d fit", len(a.Name), socks.MaxDomainLen)
	case a.Name == "" && !a.IP.IsValid():
		return socks.Addr{}, errors.New("socksclient: destination has neither a name nor an IP")
	case a.IP.Zone() != "":
		return socks.Addr{}, fmt.Errorf("socksclient: zoned IPv6 address %s cannot be sent over SOCKS", a.IP)
	}
	a.IP = a.IP.Unmap()
	return a, nil
}

// Close ends the association: it closes the UDP socket and the control
// connection.
func (u *UDPConn) Close() error {
	err := net.ErrClosed
	u.once.Do(func() {
		u.closing.Store(true)
		err = u.pc.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil // already closed by watch
		}
		u.cmu.Lock()
		stop, goWatch := u.stopWatch, u.goWatch
		u.stopWatch = nil
		u.cmu.Unlock()
		if stop != nil {
			stop() // before the close: the descriptor must still be there
		}
		if e := u.ctrl.Close(); err == nil {
			err = e
		}
		if goWatch {
			<-u.ctrlDone
		} else {
			u.endWatch()
		}
	})
	if err != nil {
		return &net.OpError{Op: "close", Net: "udp", Source: u.pc.LocalAddr(), Addr: u.relay, Err: err}
	}
	return nil
}

// WaitRead blocks until a datagram from the relay is waiting (or the socket
// has an error, which the next ReadFrom reports) without reading it, so a
// caller can take a buffer only once there is a datagram to put in it. It
// fails once the association is closed or the read deadline passes.
func (u *UDPConn) WaitRead() error {
	sc, ok := u.pc.(syscall.Conn)
	if !ok {
		return nil // ReadFrom blocks instead
	}
	rc, err := sc.SyscallConn()
	if err == nil {
		err = relay.WaitReadable(rc)
	}
	if err != nil {
		return u.ioError("read", u.relay, err)
	}
	return nil
}

// LocalAddr returns the local address of the UDP socket.
func (u *UDPConn) LocalAddr() net.Addr { return u.pc.LocalAddr() }

// RelayAddr returns the server's UDP relay address the datagrams go to.
func (u *UDPConn) RelayAddr() net.Addr { return u.relay }

// SetDeadline sets the read and write deadlines.
func (u *UDPConn) SetDeadline(t time.Time) error { return u.pc.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (u *UDPConn) SetReadDeadline(t time.Time) error { return u.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (u *UDPConn) SetWriteDeadline(t time.Time) error { return u.pc.SetWriteDeadline(t) }

var _ net.PacketConn = (*UDPConn)(nil)
