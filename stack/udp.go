package stack

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// UDP design (full cone).
//
// gVisor's UDP endpoints are 4-tuple sockets: a reply must come from the
// address the app sent to. A proxy wants full cone semantics instead: one
// flow per app source address:port, datagrams to any destination, replies
// from any remote. So no gVisor UDP endpoint is created at all:
//
//   - Inbound: our handler is installed as UDP's default transport handler,
//     which gVisor calls for every datagram no endpoint claims (all of them).
//     It validates length and checksum, copies the payload, finds or creates
//     the flow for the source address:port and does a non-blocking send into
//     the flow's bounded queue (full queue: drop and count). It never blocks
//     gVisor's packet path; new flows start the Handler on a goroutine.
//   - Outbound (WriteTo): build the UDP header ourselves and hand the packet
//     to gVisor's network layer through a route from the remote's address
//     (allowed because spoofing is on). gVisor adds the IP header and
//     fragments datagrams larger than the MTU, which hand-built IP packets
//     would have to do themselves.

type flowKey = netip.AddrPort

type datagram struct {
	b   []byte
	dst netip.AddrPort
}

// UDPFlow is every datagram one app source address:port sends, to any
// destination, and the way back to it from any remote.
type UDPFlow struct {
	s   *Stack
	src netip.AddrPort

	queue chan datagram

	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error // why the flow closed; set before closed is closed

	lastActive atomic.Int64 // unix nanoseconds
	idle       time.Duration
	idleTimer  *time.Timer

	rd deadline
}

// Src is the app's address and port.
func (f *UDPFlow) Src() netip.AddrPort { return f.src }

// ReadFrom returns the next datagram the app sent from Src and the
// destination it was sent to. A datagram longer than p is truncated and
// reported with an error wrapping io.ErrShortBuffer (n is still valid).
// After Close or idle expiry it returns an error wrapping net.ErrClosed; when
// the read deadline passes, one wrapping os.ErrDeadlineExceeded.
func (f *UDPFlow) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	// A queued datagram wins over a closed flow only if the flow is open;
	// check closed first so Close takes effect at once.
	select {
	case <-f.closed:
		return 0, netip.AddrPort{}, f.opError("read", f.closeErr)
	default:
	}
	select {
	case d := <-f.queue:
		n := copy(p, d.b)
		f.s.bytesUp.Add(uint64(n))
		if n < len(d.b) {
			return n, d.dst, f.opError("read", fmt.Errorf("datagram of %d bytes truncated to %d: %w", len(d.b), n, io.ErrShortBuffer))
		}
		return n, d.dst, nil
	case <-f.closed:
		return 0, netip.AddrPort{}, f.opError("read", f.closeErr)
	case <-f.rd.wait():
		return 0, netip.AddrPort{}, f.opError("read", os.ErrDeadlineExceeded)
	}
}

// WriteTo delivers p to the app at Src as if sent by from, which may be any
// address of the same family as Src (full cone). Datagrams larger than the
// MTU are fragmented.
func (f *UDPFlow) WriteTo(p []byte, from netip.AddrPort) (int, error) {
	select {
	case <-f.closed:
		return 0, f.opError("write", f.closeErr)
	default:
	}
	if err := f.s.sendUDP(from, f.src, p); err != nil {
		return 0, f.opError("write", err)
	}
	f.touch()
	f.s.bytesDown.Add(uint64(len(p)))
	return len(p), nil
}

// SetReadDeadline sets the deadline for ReadFrom; zero means none.
func (f *UDPFlow) SetReadDeadline(t time.Time) error {
	f.rd.set(t)
	return nil
}

// Close ends the flow: pending and later ReadFrom calls fail, later
// datagrams from Src start a new flow. Idempotent.
func (f *UDPFlow) Close() error {
	f.closeWith(fmt.Errorf("stack: udp flow closed: %w", net.ErrClosed))
	return nil
}

func (f *UDPFlow) closeWith(cause error) {
	f.closeOnce.Do(func() {
		f.s.mu.Lock()
		if f.s.udpFlows[f.src] == f {
			delete(f.s.udpFlows, f.src)
		}
		f.closeErr = cause
		close(f.closed)
		f.s.mu.Unlock()
		f.idleTimer.Stop()
		f.rd.stop()
		f.s.udpOpen.Add(-1)
	})
}

func (f *UDPFlow) touch() { f.lastActive.Store(time.Now().UnixNano()) }

// checkIdle runs from the idle timer. Resetting a timer on every datagram
// would cost more than remembering the last activity and re-arming for the
// remainder when the timer fires.
func (f *UDPFlow) checkIdle() {
	since := time.Duration(time.Now().UnixNano() - f.lastActive.Load())
	if since >= f.idle {
		f.closeWith(fmt.Errorf("stack: udp flow idle for %v: %w", f.idle, net.ErrClosed))
		return
	}
	select {
	case <-f.closed:
	default:
		f.idleTimer.Reset(f.idle - since)
	}
}

func (f *UDPFlow) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Addr: net.UDPAddrFromAddrPort(f.src), Err: err}
}

// handleUDPPacket is UDP's default transport handler. It must not block.
func (s *Stack) handleUDPPacket(id gstack.TransportEndpointID, pkt *gstack.PacketBuffer) bool {
	hdr := header.UDP(pkt.TransportHeader().Slice())
	if len(hdr) < header.UDPMinimumSize {
		return false // gVisor counts it as malformed
	}
	netHdr := pkt.Network()
	lengthValid, csumValid := header.UDPValid(hdr, func() uint16 { return pkt.Data().Checksum() },
		uint16(pkt.Data().Size()), pkt.NetworkProtocolNumber,
		netHdr.SourceAddress(), netHdr.DestinationAddress(), pkt.RXChecksumValidated)
	if !lengthValid {
		return false
	}
	if !csumValid {
		s.udpBadChecksum.Add(1)
		return true // drop silently, like a socket would
	}
	src := netip.AddrPortFrom(addrFromTCPIP(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFromTCPIP(id.LocalAddress), id.LocalPort)
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return false
	}
	payload := pkt.Data().AsRange().ToSlice()
	if l := int(hdr.Length()) - header.UDPMinimumSize; l < len(payload) {
		payload = payload[:l] // drop link padding
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	f := s.udpFlows[src]
	if f == nil {
		f = s.newFlowLocked(src)
	}
	f.touch()
	select {
	case f.queue <- datagram{b: payload, dst: dst}:
	default:
		s.udpDrops.Add(1)
	}
	return true
}

// newFlowLocked registers a flow and starts the Handler for it.
func (s *Stack) newFlowLocked(src netip.AddrPort) *UDPFlow {
	f := &UDPFlow{
		s:      s,
		src:    src,
		queue:  make(chan datagram, s.cfg.UDPQueue),
		closed: make(chan struct{}),
		idle:   s.cfg.UDPIdle,
	}
	f.rd.init()
	f.touch()
	// Arm after the field is set so the timer's goroutine sees it.
	f.idleTimer = time.AfterFunc(time.Hour, f.checkIdle)
	f.idleTimer.Reset(f.idle)
	s.udpFlows[src] = f
	s.udpOpen.Add(1)
	s.udpTotal.Add(1)
	s.goHandlerLocked(func() { s.handler.HandleUDP(s.ctx, f) })
	return f
}

// sendUDP sends payload from -> to through gVisor's network layer.
func (s *Stack) sendUDP(from, to netip.AddrPort, payload []byte) error {
	if !from.IsValid() || from.Port() == 0 {
		return fmt.Errorf("%w: source %v", errInvalidAddrPort, from)
	}
	fa, ta := from.Addr().Unmap(), to.Addr().Unmap()
	var proto tcpip.NetworkProtocolNumber
	maxPayload := math.MaxUint16 - header.UDPMinimumSize
	switch {
	case fa.Is4() && ta.Is4():
		proto = ipv4.ProtocolNumber
		maxPayload -= header.IPv4MinimumSize
	case fa.Is6() && ta.Is6():
		proto = ipv6.ProtocolNumber
	default:
		return fmt.Errorf("%w: %v -> %v", errFamilyMismatch, from, to)
	}
	if len(payload) > maxPayload {
		return fmt.Errorf("stack: datagram of %d bytes exceeds %d: %w", len(payload), maxPayload, convertError(&tcpip.ErrMessageTooLong{}))
	}
	r, terr := s.gs.FindRoute(nicID, tcpip.AddrFromSlice(fa.AsSlice()), tcpip.AddrFromSlice(ta.AsSlice()), proto, false)
	if terr != nil {
		return convertError(terr)
	}
	defer r.Release()

	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: header.UDPMinimumSize + int(r.MaxHeaderLength()),
		Payload:            buffer.MakeWithData(payload),
	})
	defer pkt.DecRef()
	uh := header.UDP(pkt.TransportHeader().Push(header.UDPMinimumSize))
	pkt.TransportProtocolNumber = udp.ProtocolNumber
	length := uint16(pkt.Size())
	uh.Encode(&header.UDPFields{SrcPort: from.Port(), DstPort: to.Port(), Length: length})
	if r.RequiresTXTransportChecksum() {
		xsum := uh.CalculateChecksum(checksum.Combine(
			r.PseudoHeaderChecksum(udp.ProtocolNumber, length),
			pkt.Data().Checksum(),
		))
		// RFC 768: a computed zero is sent as all ones (zero means "no
		// checksum", which IPv6 forbids).
		if xsum != math.MaxUint16 {
			xsum = ^xsum
		}
		uh.SetChecksum(xsum)
	}
	if terr := r.WritePacket(gstack.NetworkHeaderParams{Protocol: udp.ProtocolNumber, TTL: r.DefaultTTL()}, pkt); terr != nil {
		s.udpSendErrors.Add(1)
		return convertError(terr)
	}
	return nil
}

func addrFromTCPIP(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// deadline is a resettable read deadline: wait returns a channel closed when
// the deadline passes.
type deadline struct {
	mu    sync.Mutex
	gen   uint64
	timer *time.Timer
	c     chan struct{}
}

func (d *deadline) init() { d.c = make(chan struct{}) }

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.c
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	select {
	case <-d.c: // expired: start a fresh channel
		d.c = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.c)
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen {
			close(d.c)
		}
	})
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}
