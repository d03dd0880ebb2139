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
//   - Limits: at most Config.MaxUDPFlows flows, Config.MaxUDPFlowsPerSource
//     per app source address; a new flow beyond either closes the least
//     recently active one (of that source, or of all) first. New flows are
//     also rate limited (Config.NewUDPFlowRate, NewUDPFlowRatePerSource):
//     every flow costs the Handler an upstream association, and a flood of
//     new source ports must not take the CPU and the upstream that TCP
//     needs. A flow's queue holds at most Config.UDPQueue datagrams, all
//     flows' queues together Config.UDPQueueBytes of payload; the buffers
//     come from a pool and go back as soon as the Handler has read them,
//     so an idle flow holds no buffer at all.
//   - Reading: the Handler may read on a goroutine (ReadFrom, WaitRead)
//     or without one while the flow idles: NotifyRead calls back from
//     the packet path once a datagram is queued, TryReadFrom never
//     waits, and Detach lets the Handler return before the flow ends
//     (the router's parked relay, relay.PacketsAsync).
//   - Lifetime: the stack has no idle timer. The Handler closes flows it
//     no longer needs (the router's idle timer), and the caps bound what
//     it forgets.

type flowKey = netip.AddrPort

// UDPFlow is every datagram one app source address:port sends, to any
// destination, and the way back to it from any remote.
type UDPFlow struct {
	s   *Stack
	src netip.AddrPort

	q dgramQueue

	closed   chan struct{}
	closeErr error // why the flow closed; set before closed is closed

	// Stack.udpMu: the flow table's recency list (most recent first)
	// and when the flow was last put at its front.
	prev, next *UDPFlow
	listedAt   int64
	isClosed   bool

	lastWrite atomic.Int64 // Stack.clock of the last WriteTo

	rd deadline
}

// Src is the app's address and port.
func (f *UDPFlow) Src() netip.AddrPort { return f.src }

// ReadFrom returns the next datagram the app sent from Src and the
// destination it was sent to. A datagram longer than p is truncated and
// reported with an error wrapping io.ErrShortBuffer (n is still valid).
// After Close, or after the flow was evicted for a newer one
// (Config.MaxUDPFlows), it returns an error wrapping net.ErrClosed; when the
// read deadline passes, one wrapping os.ErrDeadlineExceeded.
func (f *UDPFlow) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	for {
		// A queued datagram wins over a closed flow only if the flow is
		// open; check closed first so Close takes effect at once.
		select {
		case <-f.closed:
			return 0, netip.AddrPort{}, f.opError("read", f.closeErr)
		default:
		}
		if d := f.q.pop(); d != nil {
			n := copy(p, d.b)
			size, dst := len(d.b), d.dst
			f.s.releaseDgram(d)
			f.s.bytesUp.Add(uint64(n))
			if n < size {
				return n, dst, f.opError("read", fmt.Errorf("datagram of %d bytes truncated to %d: %w", size, n, io.ErrShortBuffer))
			}
			return n, dst, nil
		}
		select {
		case <-f.q.ready:
		case <-f.closed:
			return 0, netip.AddrPort{}, f.opError("read", f.closeErr)
		case <-f.rd.wait():
			return 0, netip.AddrPort{}, f.opError("read", os.ErrDeadlineExceeded)
		}
	}
}

// WaitRead blocks until a datagram is queued for ReadFrom, and returns
// nil then; after Close or eviction, or once the read deadline passes, it
// returns the error ReadFrom would. It reads nothing, so a caller can
// take a buffer only once there is a datagram to put in it.
func (f *UDPFlow) WaitRead() error {
	for {
		select {
		case <-f.closed:
			return f.opError("read", f.closeErr)
		default:
		}
		if f.q.pending() {
			return nil
		}
		select {
		case <-f.q.ready:
		case <-f.closed:
			return f.opError("read", f.closeErr)
		case <-f.rd.wait():
			return f.opError("read", os.ErrDeadlineExceeded)
		}
	}
}

// TryReadFrom is ReadFrom that does not wait: ok is false, and nothing
// was read, when no datagram is queued. After Close or eviction it fails
// as ReadFrom does (the read deadline does not apply).
func (f *UDPFlow) TryReadFrom(p []byte) (n int, dst netip.AddrPort, ok bool, err error) {
	select {
	case <-f.closed:
		return 0, netip.AddrPort{}, false, f.opError("read", f.closeErr)
	default:
	}
	d := f.q.pop()
	if d == nil {
		return 0, netip.AddrPort{}, false, nil
	}
	n = copy(p, d.b)
	size, dst := len(d.b), d.dst
	f.s.releaseDgram(d)
	f.s.bytesUp.Add(uint64(n))
	if n < size {
		return n, dst, true, f.opError("read", fmt.Errorf("datagram of %d bytes truncated to %d: %w", size, n, io.ErrShortBuffer))
	}
	return n, dst, true, nil
}

// NotifyRead calls fn once, when a datagram is queued or the flow is
// closed (at once, on the caller's goroutine, if that is so already), in
// place of a goroutine waiting in ReadFrom: an idle flow then needs no
// goroutine (relay.PacketsAsync). fn runs on gVisor's packet path, under
// the stack's locks: it must not block, nor call into the flow. A later
// call replaces an fn not yet called.
func (f *UDPFlow) NotifyRead(fn func()) {
	if !f.q.notifyLater(fn) {
		fn()
	}
}

// Detach lets the Handler return before the flow has ended, for a relay
// that needs no goroutine while the flow idles (relay.PacketsAsync).
// Stack.Close closes the flow as always, and waits for it until the
// returned function is called, once the flow's relay has ended (calls
// after the first do nothing). Call it on the Handler's goroutine, before
// the Handler returns.
func (f *UDPFlow) Detach() (done func()) {
	s := f.s
	s.handlers.Add(1) // the Handler's own count holds Close's wait open
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			s.handlers.Done()
		}
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
	f.lastWrite.Store(f.s.clock())
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
	f.s.udpMu.Lock()
	f.closeLocked(cause)
	f.s.udpMu.Unlock()
}

// closeLocked takes the flow out of the table and ends it. s.udpMu held.
func (f *UDPFlow) closeLocked(cause error) {
	if f.isClosed {
		return
	}
	f.isClosed = true
	s := f.s
	s.udpFlows.remove(f)
	f.closeErr = cause
	close(f.closed)
	f.rd.stop()
	f.q.drain(s)
	s.udpOpen.Add(-1)
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
	// The link endpoint verified the checksum of every datagram that
	// arrived in one packet (or knew it good); one larger than a packet
	// was reassembled from fragments, which it cannot verify.
	validated := pkt.RXChecksumValidated && len(pkt.NetworkHeader().Slice())+int(hdr.Length()) <= int(s.link.mtu)
	lengthValid, csumValid := header.UDPValid(hdr, func() uint16 { return pkt.Data().Checksum() },
		uint16(pkt.Data().Size()), pkt.NetworkProtocolNumber,
		netHdr.SourceAddress(), netHdr.DestinationAddress(), validated)
	if !lengthValid {
		return false
	}
	if !csumValid {
		s.link.badChecksums.Add(1)
		return true // drop silently, like a socket would
	}
	src := netip.AddrPortFrom(addrFromTCPIP(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFromTCPIP(id.LocalAddress), id.LocalPort)
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return false
	}
	size := min(pkt.Data().Size(), int(hdr.Length())-header.UDPMinimumSize) // without link padding
	if s.udpQueued.Add(int64(size)) > int64(s.cfg.UDPQueueBytes) {
		s.udpQueued.Add(-int64(size))
		s.udpDrops.Add(1)
		return true
	}
	d := s.newDgram(size, dst)
	_, _ = pkt.Data().ReadTo(d, true)
	d.b = d.b[:size]

	s.udpMu.Lock()
	defer s.udpMu.Unlock()
	if s.udpClosed {
		s.releaseDgram(d)
		return true
	}
	now := s.clock()
	f := s.udpFlows.flows[src]
	opened := f == nil
	if opened {
		if f = s.newFlowLocked(src, now); f == nil {
			s.releaseDgram(d) // counted by newFlowLocked
			return true
		}
		if s.flowOpened != nil {
			s.flowOpened()
		}
	} else {
		s.udpFlows.touch(f, now)
	}
	if !f.q.push(d, s.cfg.UDPQueue) {
		s.releaseDgram(d)
		s.udpDrops.Add(1)
	}
	if opened {
		// Only now: the Handler finds the datagram that opened its flow
		// queued, even one that reads without waiting (TryReadFrom).
		s.goHandlerLocked(func() { s.handler.HandleUDP(s.ctx, f) })
	}
	return true
}

// newFlowLocked registers a flow, evicting the least recently active one
// when a cap is reached; the caller queues its first datagram and then
// starts its Handler. nil when the new
// flow rate is exceeded or no flow could be made room for. s.udpMu held.
func (s *Stack) newFlowLocked(src netip.AddrPort, now int64) *UDPFlow {
	t := &s.udpFlows
	cfg := &s.cfg
	ss := t.bySrc[src.Addr()]
	if ss == nil {
		ss = &srcFlows{bucket: fullBucket(cfg.NewUDPFlowRatePerSource, now)}
	}
	if !ss.bucket.ready(now, cfg.NewUDPFlowRatePerSource) || !t.rate.ready(now, cfg.NewUDPFlowRate) {
		s.udpRateLimited.Add(1)
		return nil
	}
	var victim *UDPFlow
	if ss.n >= cfg.MaxUDPFlowsPerSource {
		victim = t.lru(src.Addr(), true)
	} else if len(t.flows) >= cfg.MaxUDPFlows {
		victim = t.lru(netip.Addr{}, false)
	}
	if victim != nil {
		victim.closeLocked(errEvicted)
		s.udpEvicted.Add(1)
	}
	if ss.n >= cfg.MaxUDPFlowsPerSource || len(t.flows) >= cfg.MaxUDPFlows {
		s.udpDrops.Add(1)
		return nil
	}
	ss.bucket.take()
	t.rate.take()
	f := &UDPFlow{
		s:      s,
		src:    src,
		closed: make(chan struct{}),
	}
	f.q.ready = make(chan struct{}, 1)
	f.rd.init()
	t.add(f, ss, now)
	s.udpOpen.Add(1)
	s.udpTotal.Add(1)
	return f
}

// rateBucket is a token bucket of new flows: rate tokens a second, at most
// a second's worth saved up.
type rateBucket struct {
	tokens float64
	last   int64 // Stack.clock of the last refill
}

func fullBucket(rate int, now int64) rateBucket { return rateBucket{tokens: float64(rate), last: now} }

// ready refills the bucket and reports whether it holds a token.
func (b *rateBucket) ready(now int64, rate int) bool {
	if now > b.last {
		b.tokens = min(float64(rate), b.tokens+float64(now-b.last)*float64(rate)/1e9)
		b.last = now
	}
	return b.tokens >= 1
}

func (b *rateBucket) take() { b.tokens-- }

// clock is a monotonic time in nanoseconds, for flow recency.
func (s *Stack) clock() int64 { return int64(time.Since(s.epoch)) }

// udpTable is the flows by app source, with a recency list (Stack.udpMu).
type udpTable struct {
	flows      map[flowKey]*UDPFlow
	bySrc      map[netip.Addr]*srcFlows
	rate       rateBucket // new flows of all sources (Config.NewUDPFlowRate)
	head, tail *UDPFlow   // most, least recently active
}

// srcFlows is what the table knows of one app source address while it has
// flows: how many, and its new-flow rate (Config.NewUDPFlowRatePerSource).
type srcFlows struct {
	n      int
	bucket rateBucket
}

func (t *udpTable) add(f *UDPFlow, ss *srcFlows, now int64) {
	t.flows[f.src] = f
	if ss.n == 0 {
		t.bySrc[f.src.Addr()] = ss
	}
	ss.n++
	t.pushFront(f, now)
}

func (t *udpTable) remove(f *UDPFlow) {
	if t.flows[f.src] == f {
		delete(t.flows, f.src)
	}
	if ss := t.bySrc[f.src.Addr()]; ss != nil {
		if ss.n--; ss.n <= 0 {
			delete(t.bySrc, f.src.Addr())
		}
	}
	t.unlink(f)
}

// touch marks f as just active: a datagram from the app.
func (t *udpTable) touch(f *UDPFlow, now int64) {
	if t.head != f {
		t.unlink(f)
		t.pushFront(f, now)
	}
	f.listedAt = now
}

func (t *udpTable) pushFront(f *UDPFlow, now int64) {
	f.prev, f.next = nil, t.head
	if t.head != nil {
		t.head.prev = f
	} else {
		t.tail = f
	}
	t.head = f
	f.listedAt = now
}

func (t *udpTable) unlink(f *UDPFlow) {
	if f.prev != nil {
		f.prev.next = f.next
	} else if t.head == f {
		t.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else if t.tail == f {
		t.tail = f.prev
	}
	f.prev, f.next = nil, nil
}

// lru returns the least recently active flow (of src when bySource). The
// list orders flows by the app's datagrams; a flow the Handler wrote to
// since it was last listed gets a second chance at the front instead.
func (t *udpTable) lru(src netip.Addr, bySource bool) *UDPFlow {
	var fallback *UDPFlow
	for f, n := t.tail, len(t.flows); f != nil && n > 0; n-- {
		prev := f.prev
		if bySource && f.src.Addr() != src {
			f = prev
			continue
		}
		if fallback == nil {
			fallback = f
		}
		if w := f.lastWrite.Load(); w > f.listedAt {
			t.unlink(f)
			t.pushFront(f, w)
			f = prev
			continue
		}
		return f
	}
	return fallback
}

// dgram is one queued datagram in a pooled buffer.
type dgram struct {
	b     []byte // the payload, in buf
	buf   []byte
	dst   netip.AddrPort
	class int
}

// Write appends to b (gVisor's PacketData.ReadTo copies into it).
func (d *dgram) Write(p []byte) (int, error) {
	d.b = append(d.b, p...)
	return len(p), nil
}

// Buffer classes: most datagrams fit a small buffer; a large one takes a
// buffer of the largest size.
var dgramSizes = [...]int{2048, 65536}

// dgramPools hold dgrams by buffer class. Pools are the one kind of
// package-level state the house allows; they hold only free buffers.
var dgramPools [len(dgramSizes)]sync.Pool

func (s *Stack) newDgram(size int, dst netip.AddrPort) *dgram {
	class := 0
	for class < len(dgramSizes)-1 && size > dgramSizes[class] {
		class++
	}
	d, _ := dgramPools[class].Get().(*dgram)
	if d == nil || cap(d.buf) < size {
		d = &dgram{buf: make([]byte, max(dgramSizes[class], size)), class: class}
	}
	d.b, d.dst = d.buf[:0], dst
	return d
}

// releaseDgram returns d's buffer to its pool and to the queue budget.
func (s *Stack) releaseDgram(d *dgram) {
	s.udpQueued.Add(-int64(len(d.b)))
	d.b = nil
	dgramPools[d.class].Put(d)
}

// dgramQueue is a flow's FIFO of datagrams waiting for ReadFrom. Empty, it
// holds no memory beyond a few pointers.
type dgramQueue struct {
	mu    sync.Mutex
	items []*dgram
	head  int
	dead  bool          // drained: the flow closed
	ready chan struct{} // capacity 1: "something was pushed"
	// notify is NotifyRead's function while it waits: called once by
	// the next push or by drain, outside mu.
	notify func()
}

// notifyLater registers fn for the next push or the drain; false when a
// datagram is queued or the queue is drained already (the caller calls
// fn itself).
func (q *dgramQueue) notifyLater(fn func()) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead || q.head < len(q.items) {
		q.notify = nil
		return false
	}
	q.notify = fn
	return true
}

func (q *dgramQueue) push(d *dgram, limit int) bool {
	q.mu.Lock()
	if q.dead || len(q.items)-q.head >= limit {
		q.mu.Unlock()
		return false
	}
	if q.head > 0 && len(q.items) == cap(q.items) {
		// Reuse the consumed front instead of growing.
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, d)
	fn := q.notify
	q.notify = nil
	q.mu.Unlock()
	if fn != nil {
		fn()
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// pending reports whether a datagram is queued.
func (q *dgramQueue) pending() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head < len(q.items)
}

func (q *dgramQueue) pop() *dgram {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return nil
	}
	d := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		// Empty: keep a small backing array for the next datagram, let
		// a large one go.
		if cap(q.items) > 8 {
			q.items = nil
		} else {
			q.items = q.items[:0]
		}
		q.head = 0
	}
	return d
}

// drain releases every queued datagram; later pushes fail.
func (q *dgramQueue) drain(s *Stack) {
	q.mu.Lock()
	items := q.items[q.head:]
	q.items, q.head, q.dead = nil, 0, true
	fn := q.notify
	q.notify = nil
	q.mu.Unlock()
	if fn != nil {
		fn()
	}
	for _, d := range items {
		s.releaseDgram(d)
	}
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
