package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/tunsocks/tunsocks/internal/handoff"
	"github.com/tunsocks/tunsocks/internal/memtrim"
)

// headroom is the offset at which packets start in device buffers. The
// Linux TUN (wireguard-go, IFF_VNET_HDR) needs >= 10 bytes in front of every
// written packet for its virtio header; 16 keeps packets 8-byte aligned and
// equals tun.Headroom (not imported: stack must not depend on the OS device).
const headroom = 16

// maxCoalesced is the capacity of each write buffer beyond the headroom.
// wireguard-go's GRO coalesces consecutive TCP/UDP segments of one flow into
// the first buffer of the run, in place, but only while that buffer has spare
// capacity; 64 KiB (the largest IP packet) lets a full batch collapse into
// one kernel write. The memory is per device (BatchSize buffers), not per
// flow, and pages never written stay untouched.
const maxCoalesced = 65535

// linkEndpoint connects gVisor to a BatchDevice.
//
// Inbound: one goroutine calls Device.Read with BatchSize buffers and hands
// each packet to gVisor synchronously (gVisor's TCP moves segment processing
// to its own goroutines, UDP never blocks in our handler).
//
// Outbound: WritePackets, called on whichever gVisor goroutine sends, writes
// a lone packet itself when the writer is idle and nothing is queued (a
// round trip's ACK and reply, see WritePackets); otherwise it only takes a
// reference to the packets and appends them to a bounded queue, so no
// sender waits for a busy device. One writer goroutine drains the queue in
// batches of up to BatchSize, serialises them into its buffers and calls
// Device.Write once per batch (where the Linux device applies GRO). With a
// GSODevice, TCP packets (up to 64 KB segments, see SupportedGSO) go out one
// by one through WriteGSO instead, in queue order. When the queue is full
// packets are dropped and counted, like a NIC's tx ring; TCP retransmits,
// UDP is best effort.
type linkEndpoint struct {
	dev Device
	mtu uint32
	// vdev is dev when it reports which packets' checksums the kernel
	// validated (ValidatingDevice); nil otherwise.
	vdev ValidatingDevice
	// wdev is dev when it can hand over TCP segments longer than the
	// MTU whole (WholeSegmentDevice) and readLoop may take them; wsize is
	// the buffer its reads need.
	wdev  WholeSegmentDevice
	wsize int
	// sys, when set (system TCP mode), sees every packet read before
	// gVisor does (divert): it may take it and rewrite it in place for
	// writing back to the device.
	sys *sysTCP
	// tap, when set, records the app's packets (Config.Tap).
	tap   PacketTap
	batch int
	log   *slog.Logger

	mu         sync.RWMutex
	dispatcher gstack.NetworkDispatcher

	// gro coalesces the TCP segments of one device batch before they enter
	// the stack (the TUN reader split the kernel's large segments; gVisor's
	// per-packet cost dominates at high rates). Used by readLoop only.
	gro gro.GRO

	// gso is the device when it takes segmentation-offloaded packets
	// (GSODevice) and GSO is enabled; gsoMax is the largest packet gVisor
	// may hand us then. See SupportedGSO.
	gso    GSODevice
	gsoMax int
	// gsov is gso when it writes packets from pieces (GSOVectorDevice)
	// and no tap records them: writeLoop then writes gVisor's views of
	// a segment without copying them together.
	gsov GSOVectorDevice

	// acks holds back the TCP's pure ACKs for a short while (see
	// ackDelayer); nil when off.
	acks *ackDelayer
	// stripTS: the app's SYNs lose their timestamp option before gVisor
	// sees them (see stripSYNTimestamp).
	stripTS bool

	qmu    sync.Mutex
	queue  []*gstack.PacketBuffer
	qlimit int
	qready chan struct{} // capacity 1: "queue is not empty"
	closed bool
	// release (capacity 1) asks writeLoop, between batches, to hand the
	// pages of its buffers back to the system (ReleaseBuffers).
	release chan struct{}
	// released counts the bytes writeLoop's and readLoop's releases
	// covered, readReleased readLoop's alone.
	released, readReleased atomic.Uint64
	// rdev is dev when its blocked Read can be interrupted, so readLoop
	// releases its buffers too (ReadInterrupter); nil otherwise.
	rdev ReadInterrupter
	// cdev is dev when it counts the reads that waited
	// (WaitCountingDevice), so readLoop delivers without waking an idle
	// processor; nil otherwise.
	cdev WaitCountingDevice
	// handoff is package handoff's Hold, Release and Wake (tests
	// record the calls).
	handoff handoffOps

	// wmu is held by whoever writes packets of the queue's order to the
	// device: writeLoop while it takes and writes a batch, or the
	// goroutine that produced a lone small packet and found the queue
	// empty and the writer idle (writeDirect), which writes it itself and
	// spares the round trip a wakeup of writeLoop. direct is
	// writeDirect's buffer.
	wmu    sync.Mutex
	direct [1][]byte
	// iov and vhdr are writeGSOVec's, under wmu.
	iov  [][]byte
	vhdr [vnetHdrLen]byte

	done      chan struct{} // closed by Close: stop both loops
	closing   atomic.Bool   // the stack is closing the device: a closed read is expected
	failed    chan struct{} // closed when the read loop stops on its own
	failErr   error         // why; set before failed is closed
	closeOnce sync.Once
	wg        sync.WaitGroup

	pktsIn, pktsOut, bytesIn, bytesOut atomic.Uint64
	gsoOut                             atomic.Uint64 // packets written with WriteGSO
	txDrops, rxDrops, rxErrors         atomic.Uint64
	txErrors, rxLost, badChecksums     atomic.Uint64
	readBufSize                        int
}

type linkConfig struct {
	dev         Device
	mtu         uint32
	readBufSize int
	queueLen    int
	gso         bool          // use the device's segmentation offload, if any
	ackDelay    time.Duration // hold pure ACKs this long (0: not at all)
	stripTS     bool          // strip the timestamp option of the app's SYNs
	sys         *sysTCP
	tap         PacketTap
	log         *slog.Logger
}

// newLinkEndpoint makes the endpoint; start starts its packet loops.
func newLinkEndpoint(c linkConfig) *linkEndpoint {
	batch := c.dev.BatchSize()
	if batch < 1 {
		batch = 1
	}
	if batch > 512 {
		batch = 512
	}
	e := &linkEndpoint{
		dev:         c.dev,
		mtu:         c.mtu,
		sys:         c.sys,
		tap:         c.tap,
		batch:       batch,
		log:         c.log,
		qlimit:      c.queueLen,
		qready:      make(chan struct{}, 1),
		release:     make(chan struct{}, 1),
		done:        make(chan struct{}),
		failed:      make(chan struct{}),
		readBufSize: c.readBufSize,
		stripTS:     c.stripTS,
		handoff:     handoffOps{hold: handoff.Hold, release: handoff.Release, yield: handoff.Yield, wake: handoff.Wake},
	}
	e.vdev, _ = c.dev.(ValidatingDevice)
	e.rdev, _ = c.dev.(ReadInterrupter)
	if d, ok := c.dev.(WaitCountingDevice); ok {
		if _, counts := d.ReadWaits(); counts {
			e.cdev = d
		}
	}
	if w, ok := c.dev.(WholeSegmentDevice); ok && c.sys == nil && c.tap == nil {
		// Diverted packets are rewritten for the kernel and recorded
		// ones go to a capture: both want the segments as on the wire.
		if m := w.WholeReadSize(); m > 0 && m <= buffer.MaxChunkSize {
			e.wdev, e.wsize = w, m
		}
	}
	if g, ok := c.dev.(GSODevice); ok && c.gso {
		if m := g.GSOMaxSize(); m > int(c.mtu) {
			e.gso, e.gsoMax = g, min(m, maxCoalesced)
			if v, ok := g.(GSOVectorDevice); ok && c.tap == nil {
				e.gsov = v
			}
		}
	}
	if c.ackDelay > 0 {
		e.acks = newAckDelayer(c.ackDelay, c.mtu, e.writeHeld)
	}
	e.gro.Init(true)
	return e
}

// start starts the read and write loops.
func (e *linkEndpoint) start() {
	e.wg.Add(2)
	go e.readLoop(e.readBufSize)
	go e.writeLoop()
}

// record hands pkt to the tap unless it is system TCP's translated leg.
func (e *linkEndpoint) record(now time.Time, pkt []byte) {
	if e.sys != nil && e.sys.inner(pkt) {
		return
	}
	_ = e.tap.WritePacket(now, pkt)
}

// writeRaw writes one packet built outside the packet loops (system TCP's
// RSTs, SYNs and self-test probes) to the device.
func (e *linkEndpoint) writeRaw(pkt []byte) error {
	if e.tap != nil {
		e.record(time.Now(), pkt)
	}
	buf := make([]byte, headroom+len(pkt))
	copy(buf[headroom:], pkt)
	if _, err := e.dev.Write([][]byte{buf}, headroom); err != nil {
		e.txErrors.Add(1)
		return err
	}
	e.pktsOut.Add(1)
	return nil
}

// readLoop runs until the device is closed or fails persistently.
func (e *linkEndpoint) readLoop(bufSize int) {
	defer e.wg.Done()
	bufs := make([][]byte, e.batch)
	// backing holds all of bufs when they are small: one allocation, so
	// that a release covers whole pages (a 1.5 KiB buffer holds none).
	var backing []byte
	page := os.Getpagesize()
	if e.sys != nil {
		// Diverted packets are written back from these buffers; spare
		// capacity lets the device's GRO join a flow's segments into the
		// first one (untouched pages cost no memory). Outside the Go
		// heap, as writeLoop's, and each on pages of its own.
		size := headroom + max(maxCoalesced, bufSize)
		stride := (size + page - 1) / page * page
		region, free := memtrim.OffHeap(stride * len(bufs))
		defer free()
		for i := range bufs {
			bufs[i] = region[i*stride : i*stride+headroom+bufSize : i*stride+size]
		}
	} else {
		size := headroom + bufSize
		backing = make([]byte, (size*len(bufs)+page-1)/page*page)
		for i := range bufs {
			bufs[i] = backing[i*size : (i+1)*size : (i+1)*size]
		}
	}
	// release hands the buffers' pages back to the system: they read as
	// zeros afterwards and cost memory again only where a read writes.
	release := func() {
		n := memtrim.ReleasePages(backing)
		if backing == nil {
			for _, b := range bufs {
				n += memtrim.ReleasePages(b)
			}
		}
		e.readReleased.Add(uint64(n))
		e.released.Add(uint64(n))
	}
	sizes := make([]int, e.batch)
	valid := make([]bool, e.batch)
	var back [][]byte // diverted packets to write back, per batch
	// big is the next read's buffer with a WholeSegmentDevice: a view of
	// gVisor's pool, which a whole segment read into it becomes (no
	// copy). Other reads are copied out of it into bufs, as before.
	var big *buffer.View
	defer func() {
		if big != nil {
			big.Release()
		}
	}()
	consecutiveErrs := 0
	// held: the last batch went to gVisor under handoff.Hold, and waits
	// is the device's count of reads that waited before this one.
	// yield: the last batch was a lone packet whose read had waited, and
	// what it readied runs before the next read (handoff.Yield).
	// heldWhole: that batch was a whole segment, and wholeHeld counts
	// the whole segments held since the goroutines they readied last
	// had a thread (see maxWholeHeld).
	held, heldWhole, yield := false, false, false
	wholeHeld := 0
	var waits uint64
	for {
		var n int
		var err error
		var whole *buffer.View
		if e.cdev != nil {
			waits, _ = e.cdev.ReadWaits()
		}
		if e.wdev != nil {
			if big == nil {
				big = buffer.NewViewSize(e.wsize)
			}
			var start, end int
			n, start, end, err = e.wdev.ReadWhole(big.AsSlice(), bufs, sizes, valid, headroom)
			if end > start {
				whole = big
				big = nil
				whole.TrimFront(start)
				whole.CapLength(end - start)
			}
		} else if e.vdev != nil {
			n, err = e.vdev.ReadValidated(bufs, sizes, valid, headroom)
		} else {
			n, err = e.dev.Read(bufs, sizes, headroom)
		}
		waited := false
		if e.cdev != nil {
			w, _ := e.cdev.ReadWaits()
			waited = w != waits
		}
		if held {
			// The goroutines the last batch readied (gVisor's TCP
			// processors) run on this thread when this read waits
			// (or ran before it: yield); when it did not, they, or
			// what they readied in turn, need another thread now.
			held = false
			if waited {
				wholeHeld = 0
			} else if !heldWhole || wholeHeld >= maxWholeHeld {
				e.handoff.wake()
				wholeHeld = 0
			}
		}
		heldWhole, yield = false, false
		if e.cdev != nil && whole == nil && n == 1 && !pureACK(bufs[0][headroom:headroom+sizes[0]]) {
			// One packet of a request/response exchange: it readies at
			// most one goroutine (a TCP processor, a new flow's
			// handler), which this thread runs when it waits for the
			// next packet. The goroutines of a batch of several are
			// left to the scheduler, to spread over idle processors;
			// so are those of a bulk download's ACKs, which come back
			// to back (holding them too, the download's CPU per MB
			// rose by about a tenth in A/B runs on a loaded VM). See
			// WaitCountingDevice.
			e.handoff.hold()
			held = true
			// When the read before it waited, the device is idle: a
			// request of an exchange, whose way to the upstream
			// (gVisor's processor, then the relay) would otherwise
			// wait for this goroutine's next read, a system call that
			// finds nothing, and its trip into the poller (about 3 µs
			// of the ~20 µs from the TUN read to the upstream write in
			// perf sched timelines). Under load reads do not wait, and
			// the reader does not queue behind others.
			yield = waited
		}
		if whole != nil && e.cdev != nil {
			// A bulk upload's whole segment: held too, and not woken
			// for when the next read returns at once (see
			// maxWholeHeld).
			e.handoff.hold()
			held, heldWhole = true, true
			wholeHeld++
		}
		if whole != nil {
			e.deliverView(whole)
		}
		// A read that lost packets is counted before the packets it did
		// return are delivered, so the counter never lags what an app
		// has already seen.
		lost := err != nil && errors.Is(err, ErrPacketsLost)
		if lost {
			// Declared non-fatal by the Device contract (wireguard-go's
			// ErrTooManySegments): count it and read on at once.
			if k := e.rxLost.Add(1); k&(k-1) == 0 { // log the 1st, 2nd, 4th, 8th...
				e.log.Debug("tun read lost packets", "err", err, "times", k)
			}
		}
		if n > 0 {
			e.mu.RLock()
			e.gro.Dispatcher = e.dispatcher
			e.mu.RUnlock()
			var now time.Time
			if e.tap != nil {
				now = time.Now()
			}
			for i := range n {
				pkt := bufs[i][headroom : headroom+sizes[i]]
				if e.tap != nil {
					e.record(now, pkt)
				}
				if !valid[i] && !checksumsOK(pkt) {
					e.pktsIn.Add(1)
					e.badChecksums.Add(1)
					continue
				}
				if e.sys != nil {
					if mine, write := e.sys.divert(pkt); mine {
						e.pktsIn.Add(1)
						e.bytesIn.Add(uint64(len(pkt)))
						if write {
							if e.tap != nil {
								e.record(now, pkt)
							}
							back = append(back, bufs[i][:headroom+sizes[i]])
						}
						continue
					}
				}
				if e.stripTS {
					stripSYNTimestamp(pkt)
				}
				e.deliver(pkt, n == 1)
			}
			if len(back) > 0 {
				// One write for the batch: the Linux device's GRO joins
				// a flow's segments again.
				if _, err := e.dev.Write(back, headroom); err != nil {
					e.txErrors.Add(1)
					e.log.Debug("tun write (system TCP)", "err", err, "packets", len(back))
				} else {
					e.pktsOut.Add(uint64(len(back)))
				}
				clear(back)
				back = back[:0]
			}
			// One batch from the device is one GRO window: consecutive
			// segments of a flow go up the stack as one large packet.
			if e.gro.Dispatcher != nil {
				e.gro.Flush()
			}
		}
		if yield {
			e.handoff.yield()
		}
		if held {
			e.handoff.release()
		}
		if err == nil {
			consecutiveErrs = 0
			continue
		}
		if lost {
			consecutiveErrs = 0
			continue
		}
		if e.rdev != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// ReleaseBuffers woke us (releaseBuffers): the device is
			// idle, and nothing but this loop touches bufs.
			consecutiveErrs = 0
			release()
			if big != nil {
				// The whole-segment buffer goes back to gVisor's pool,
				// and the next read after the idle spell takes one.
				big.Release()
				big = nil
			}
			continue
		}
		if e.closing.Load() {
			return
		}
		select {
		case <-e.done:
			return
		default:
		}
		if isClosedErr(err) {
			// Nobody asked: the interface was deleted, or the
			// descriptor closed, under us.
			e.fail(fmt.Errorf("the device was closed or removed: %w", err))
			return
		}
		// Any other error: a malformed offload header, say. The packet is
		// lost and counted. A device that only returns errors is dead;
		// give up after a while instead of spinning.
		e.rxErrors.Add(1)
		consecutiveErrs++
		if consecutiveErrs == 1 || consecutiveErrs%100 == 0 {
			e.log.Debug("tun read", "err", err, "consecutive", consecutiveErrs)
		}
		if consecutiveErrs >= maxConsecutiveReadErrors {
			e.fail(fmt.Errorf("%d reads in a row failed, the last with: %w", consecutiveErrs, err))
			return
		}
		select {
		case <-e.done:
			return
		case <-time.After(time.Duration(min(consecutiveErrs, 100)) * time.Millisecond):
		}
	}
}

const maxConsecutiveReadErrors = 1000

// maxWholeHeld is how many whole segments (a bulk upload's, up to 64 KiB
// each) the reader delivers back to back before it wakes an idle
// processor for the goroutines they readied (gVisor's TCP processor),
// when its reads keep returning at once. Until then they run when the
// reader waits for its next packet, or on a thread that looks for work
// anyway: one processor run, and one ACK and relay wakeup, per several
// segments instead of a thread woken and put back to sleep per segment
// (the TUN program's CPU time per MB of a single-stream upload fell by
// about a tenth in A/B runs). The bound keeps a reader that never waits
// (the app sends faster than it reads) from holding the processor back
// for long: 16 segments are read in well under a millisecond.
const maxWholeHeld = 16

// pureACK reports whether pkt is a TCP segment with no payload and no
// flag but ACK (ECE and CWR aside): the returning ACKs of a bulk
// download. Anything it cannot parse is not one.
func pureACK(pkt []byte) bool {
	tcp, ok := tcpSegment(pkt)
	if !ok {
		return false
	}
	t := header.TCP(tcp)
	return int(t.DataOffset()) == len(tcp) && t.Flags()&^(header.TCPFlagEce|header.TCPFlagCwr) == header.TCPFlagAck
}

// tcpSegment returns the TCP segment (header and payload) the IP packet
// pkt carries, with at least a minimal TCP header: IPv4 unfragmented, or
// IPv6 without extension headers (not worth parsing here); anything else,
// or a length that does not add up, is not ok.
func tcpSegment(pkt []byte) (tcp []byte, ok bool) {
	switch {
	case len(pkt) >= header.IPv4MinimumSize && header.IPVersion(pkt) == header.IPv4Version:
		ip := header.IPv4(pkt)
		hl, total := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || hl < header.IPv4MinimumSize || total > len(pkt) ||
			total < hl || ip.FragmentOffset() != 0 || ip.Flags()&header.IPv4FlagMoreFragments != 0 {
			return nil, false
		}
		tcp = pkt[hl:total]
	case len(pkt) >= header.IPv6MinimumSize && header.IPVersion(pkt) == header.IPv6Version:
		ip := header.IPv6(pkt)
		total := header.IPv6MinimumSize + int(ip.PayloadLength())
		if tcpip.TransportProtocolNumber(ip.NextHeader()) != header.TCPProtocolNumber || total > len(pkt) {
			return nil, false
		}
		tcp = pkt[header.IPv6MinimumSize:total]
	default:
		return nil, false
	}
	return tcp, len(tcp) >= header.TCPMinimumSize
}

// tcpPseudoSum is the checksum of the pseudo-header of a TCP segment of
// tcpLen bytes in the IP packet pkt (one tcpSegment accepted).
func tcpPseudoSum(pkt []byte, tcpLen int) uint16 {
	if header.IPVersion(pkt) == header.IPv4Version {
		ip := header.IPv4(pkt)
		return header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	}
	ip := header.IPv6(pkt)
	return header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
}

// handoffOps is how readLoop hands a packet's goroutine to its own thread
// (package handoff).
type handoffOps struct {
	hold, release, yield, wake func()
}

// fail records why the read loop stopped on its own and signals it.
func (e *linkEndpoint) fail(err error) {
	e.failErr = err
	e.log.Error("tun: packet loop stopped", "err", err)
	close(e.failed)
}

// netProto is the network protocol of the IP packet pkt by its version
// nibble, 0 for an empty packet or another version.
func netProto(pkt []byte) tcpip.NetworkProtocolNumber {
	if len(pkt) == 0 {
		return 0
	}
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		return ipv4.ProtocolNumber
	case header.IPv6Version:
		return ipv6.ProtocolNumber
	}
	return 0
}

// deliver hands pkt to gVisor, through GRO unless alone says it is the
// only packet of its read: GRO joins a flow's consecutive segments of one
// read, and a lone one (a request of a round trip) would only be parsed,
// hashed into a bucket and flushed again at the end of the read.
func (e *linkEndpoint) deliver(pkt []byte, alone bool) {
	proto := netProto(pkt)
	if proto == 0 || e.gro.Dispatcher == nil {
		e.rxDrops.Add(1)
		return
	}
	e.pktsIn.Add(1)
	e.bytesIn.Add(uint64(len(pkt)))
	// The device reuses its buffers, so the packet is copied into gVisor's
	// pooled views.
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = proto
	pb.RXChecksumValidated = true // see Capabilities
	if alone {
		e.gro.Dispatcher.DeliverNetworkPacket(proto, pb)
	} else {
		e.gro.Enqueue(pb)
	}
	pb.DecRef()
}

// deliverView hands the stack one packet read whole into v (a TCP segment
// of up to 64 KiB, see WholeSegmentDevice), taking v over. Its checksums
// count as validated.
func (e *linkEndpoint) deliverView(v *buffer.View) {
	pkt := v.AsSlice()
	proto := netProto(pkt)
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if proto == 0 || d == nil {
		e.rxDrops.Add(1)
		v.Release()
		return
	}
	e.pktsIn.Add(1)
	e.bytesIn.Add(uint64(len(pkt)))
	var payload buffer.Buffer
	if hl := tcpHeadersLen(pkt, proto); hl > 0 && hl < len(pkt) {
		// The headers go into a small view of their own, the payload
		// stays in v: gVisor's IP layer holds a reference to the
		// network header's view while it reads that header again
		// (ipv4 HandlePacket, after parseAndValidate), and reading a
		// header from a view whose chunk is shared copies the whole
		// chunk (buffer.PullUp): with the headers in v, every segment
		// was copied once more, 64 KiB cleared and copied.
		// (Merge, not Append: Append would fill the header view's
		// spare room with the payload's first bytes.)
		payload = buffer.MakeWithView(buffer.NewViewWithData(pkt[:hl]))
		v.TrimFront(hl)
		rest := buffer.MakeWithView(v)
		payload.Merge(&rest)
	} else {
		payload = buffer.MakeWithView(v)
	}
	pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: payload})
	pb.NetworkProtocolNumber = proto
	pb.RXChecksumValidated = true
	d.DeliverNetworkPacket(proto, pb)
	pb.DecRef()
}

// tcpHeadersLen is the length of the IP and TCP headers of pkt, an IP
// packet of protocol proto, when it is a TCP segment whose headers are
// whole; 0 otherwise.
func tcpHeadersLen(pkt []byte, proto tcpip.NetworkProtocolNumber) int {
	var ipLen int
	switch proto {
	case ipv4.ProtocolNumber:
		if len(pkt) < header.IPv4MinimumSize || header.IPv4(pkt).Protocol() != uint8(header.TCPProtocolNumber) {
			return 0
		}
		ipLen = int(header.IPv4(pkt).HeaderLength())
	case ipv6.ProtocolNumber:
		if len(pkt) < header.IPv6MinimumSize || header.IPv6(pkt).NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0
		}
		ipLen = header.IPv6MinimumSize
	default:
		return 0
	}
	if ipLen < header.IPv4MinimumSize || len(pkt) < ipLen+header.TCPMinimumSize {
		return 0
	}
	tcpLen := int(header.TCP(pkt[ipLen:]).DataOffset())
	if tcpLen < header.TCPMinimumSize || len(pkt) < ipLen+tcpLen {
		return 0
	}
	return ipLen + tcpLen
}

// WritePackets implements gstack.LinkWriter. It never blocks on the
// device: it queues the packets for writeLoop, except a lone packet no
// larger than the MTU when writeLoop is idle and nothing is queued, which
// it writes at once (one system call, no wakeup). A 1-byte round trip
// sends two such packets: the ACK of the app's request, which gVisor's
// TCP processor goroutine sends right after it made the request readable
// (it never delays an ACK), and the reply, sent by the relay goroutine
// that writes the upstream's bytes into the netstack. Queued, each woke
// writeLoop: the processor's ACK cost a goroutine handoff, and usually an
// idle thread's wakeup, on the request's way to the upstream. Under load
// (a batch being written, packets queued) everything goes through the
// queue in order and leaves in batches. With an ackDelayer (AckDelay) the
// ACK of a small request is held instead and usually never written: the
// reply carries it.
func (e *linkEndpoint) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	if d := e.acks; d != nil {
		lone := pkts.Len() == 1
		var firsts []*gstack.PacketBuffer
		for _, pkt := range pkts.AsSlice() {
			held, first := d.out(pkt, lone)
			if held {
				return 1, nil // only a lone packet is held
			}
			if first != nil {
				firsts = append(firsts, first)
			}
		}
		if firsts != nil {
			// Held ACKs of these flows go out before them.
			e.send(firsts)
			for _, p := range firsts {
				p.DecRef()
			}
		}
	}
	return e.send(pkts.AsSlice())
}

// linkQDisc is the NIC's queueing discipline (gstack.NICOptions.QDisc):
// gVisor's NIC hands it each outgoing packet, and it hands the packet to
// the link as WritePackets would. gVisor's default discipline wraps every
// packet in a PacketBufferList of its own to call WritePackets, and that
// list's backing array escapes to the heap through the interface call:
// one allocation per packet, two per 1-byte round trip (the request's
// ACK, held, and the reply). The link's own queue and writer are the
// discipline; Close does nothing (the stack closes the link).
type linkQDisc struct{ e *linkEndpoint }

// WritePacket implements gstack.QueueingDiscipline.
func (q linkQDisc) WritePacket(pkt *gstack.PacketBuffer) tcpip.Error {
	e := q.e
	if d := e.acks; d != nil {
		held, first := d.out(pkt, true)
		if held {
			return nil
		}
		if first != nil {
			// A held ACK of this flow goes out before it.
			e.sendOne(first)
			first.DecRef()
		}
	}
	_, err := e.sendOne(pkt)
	return err
}

// Close implements gstack.QueueingDiscipline.
func (linkQDisc) Close() {}

// sendOne is send of one packet.
func (e *linkEndpoint) sendOne(pkt *gstack.PacketBuffer) (int, tcpip.Error) {
	one := [1]*gstack.PacketBuffer{pkt}
	return e.send(one[:])
}

// writeHeld writes ACKs the delayer held back whose time has come and
// releases its references.
func (e *linkEndpoint) writeHeld(pkts []*gstack.PacketBuffer) {
	e.send(pkts)
	for _, p := range pkts {
		p.DecRef()
	}
}

// send writes pkts (the caller keeps its references): a lone one at once
// when the writer is idle, the others through the queue.
func (e *linkEndpoint) send(pkts []*gstack.PacketBuffer) (int, tcpip.Error) {
	if len(pkts) == 1 && e.wmu.TryLock() {
		pkt := pkts[0]
		e.qmu.Lock()
		idle := !e.closed && len(e.queue) == 0
		e.qmu.Unlock()
		if idle && pkt.Size() <= int(e.mtu) {
			e.writeDirect(pkt)
			e.wmu.Unlock()
			return 1, nil
		}
		e.wmu.Unlock()
	}
	e.qmu.Lock()
	if e.closed {
		e.qmu.Unlock()
		return 0, &tcpip.ErrClosedForSend{}
	}
	n := 0
	for _, pkt := range pkts {
		if len(e.queue) >= e.qlimit {
			break
		}
		e.queue = append(e.queue, pkt.IncRef())
		n++
	}
	e.qmu.Unlock()
	if dropped := len(pkts) - n; dropped > 0 {
		e.txDrops.Add(uint64(dropped))
	}
	if n > 0 {
		select {
		case e.qready <- struct{}{}:
		default:
		}
		return n, nil
	}
	return 0, &tcpip.ErrNoBufferSpace{}
}

func (e *linkEndpoint) writeLoop() {
	defer e.wg.Done()
	// The buffers (8 MiB for a batch of 128, of which a burst writes a
	// little) live outside the Go heap: on it, their size would let that
	// much more garbage pile up between collections (see
	// memtrim.OffHeap). Each starts on a page of its own, so that a
	// release covers it whole.
	page := os.Getpagesize()
	size := headroom + max(maxCoalesced, int(e.mtu))
	stride := (size + page - 1) / page * page
	n := e.batch
	if e.gso != nil && e.gsov == nil {
		n++ // gsoBuf
	}
	region, free := memtrim.OffHeap(stride * n)
	defer free()
	store := make([][]byte, e.batch) // full-capacity backing buffers
	for i := range store {
		store[i] = region[i*stride : i*stride+headroom+int(e.mtu) : i*stride+size]
	}
	var gsoBuf []byte
	if e.gso != nil && e.gsov == nil {
		at := e.batch * stride
		gsoBuf = region[at : at : at+headroom+maxCoalesced]
	}
	bufs := make([][]byte, 0, e.batch)
	var spare []*gstack.PacketBuffer // recycled queue slice
	// flush hands the packets gathered in bufs to the device's batched
	// Write (where the Linux device applies GRO).
	flush := func() bool {
		if len(bufs) == 0 {
			return true
		}
		if e.tap != nil {
			now := time.Now()
			for _, b := range bufs {
				e.record(now, b[headroom:])
			}
		}
		_, err := e.dev.Write(bufs, headroom)
		k := len(bufs)
		bufs = bufs[:0]
		if err != nil {
			if isClosedErr(err) {
				return false
			}
			e.txErrors.Add(1)
			e.log.Debug("tun write", "err", err, "packets", k)
			return true
		}
		e.pktsOut.Add(uint64(k))
		return true
	}
	for {
		select {
		case <-e.done:
			return
		case <-e.release:
			// The buffers keep their capacity (64 KiB each, so the
			// device's GRO can join a flow's segments into one), which
			// costs memory only where a burst wrote: after one, up to
			// 8 MiB stays resident though idle.
			n := 0
			for _, b := range store {
				n += memtrim.ReleasePages(b)
			}
			n += memtrim.ReleasePages(gsoBuf)
			e.released.Add(uint64(n))
			continue
		case <-e.qready:
		}
		// Held while the batch is taken and written, so writeDirect
		// never overtakes packets queued before its own.
		e.wmu.Lock()
		e.qmu.Lock()
		taken := e.queue
		e.queue = spare
		e.qmu.Unlock()
		for i, pkt := range taken {
			taken[i] = nil
			if e.gso != nil && pkt.GSOOptions.Type != gstack.GSONone {
				// Earlier packets first: per-flow order is kept
				// because everything leaves in queue order under wmu.
				if !flush() {
					pkt.DecRef()
					e.dropPending(taken[i+1:])
					e.wmu.Unlock()
					return
				}
				if e.gsov != nil {
					err := e.writeGSOVec(pkt)
					pkt.DecRef()
					if err != nil && isClosedErr(err) {
						e.dropPending(taken[i+1:])
						e.wmu.Unlock()
						return
					}
					continue
				}
				b := gsoBuf[:headroom]
				putVnetHdr(b[headroom-vnetHdrLen:headroom], pkt)
				for _, s := range pkt.AsSlices() {
					b = append(b, s...)
				}
				gsoBuf = b[:0]
				e.bytesOut.Add(uint64(len(b) - headroom))
				pkt.DecRef()
				if e.tap != nil {
					// As a capture on a NIC with TSO shows it: one large
					// segment, checksum left to the kernel.
					e.record(time.Now(), b[headroom:])
				}
				if err := e.gso.WriteGSO(b[headroom-vnetHdrLen:]); err != nil {
					if isClosedErr(err) {
						e.dropPending(taken[i+1:])
						e.wmu.Unlock()
						return
					}
					e.txErrors.Add(1)
					e.log.Debug("tun gso write", "err", err, "bytes", len(b)-headroom)
				} else {
					e.pktsOut.Add(1)
					e.gsoOut.Add(1)
				}
				continue
			}
			b := appendPacket(store[len(bufs)][:headroom], pkt)
			if len(b) > cap(store[len(bufs)]) {
				// append had to reallocate (a packet above the MTU,
				// never expected); keep the bigger buffer.
				store[len(bufs)] = b[:cap(b)]
			}
			e.bytesOut.Add(uint64(len(b) - headroom))
			bufs = append(bufs, b)
			pkt.DecRef()
			if len(bufs) == e.batch && !flush() {
				e.dropPending(taken[i+1:])
				e.wmu.Unlock()
				return
			}
		}
		ok := flush()
		e.wmu.Unlock()
		if !ok {
			return
		}
		spare = taken[:0]
	}
}

// releaseBuffers asks writeLoop to hand the pages of its idle buffers
// back to the system, which it does between batches, and interrupts the
// device's Read so that readLoop does the same with its buffers.
func (e *linkEndpoint) releaseBuffers() {
	select {
	case e.release <- struct{}{}:
	default:
	}
	if e.rdev != nil {
		if err := e.rdev.InterruptRead(); err != nil {
			e.log.Debug("tun read not interrupted: the reader keeps its buffers", "err", err)
		}
	}
}

// writeDirect writes one packet of at most the MTU to the device from
// the calling goroutine, as writeLoop would; the caller holds wmu and
// found the queue empty.
func (e *linkEndpoint) writeDirect(pkt *gstack.PacketBuffer) {
	if e.direct[0] == nil {
		e.direct[0] = make([]byte, 0, headroom+int(e.mtu))
	}
	b := e.direct[0][:headroom]
	gso := e.gso != nil && pkt.GSOOptions.Type != gstack.GSONone
	if gso {
		putVnetHdr(b[headroom-vnetHdrLen:headroom], pkt)
	}
	b = appendPacket(b, pkt)
	e.direct[0] = b[:0]
	e.bytesOut.Add(uint64(len(b) - headroom))
	if e.tap != nil {
		e.record(time.Now(), b[headroom:])
	}
	var err error
	if gso {
		err = e.gso.WriteGSO(b[headroom-vnetHdrLen:])
	} else {
		e.direct[0] = b
		_, err = e.dev.Write(e.direct[:], headroom)
		e.direct[0] = b[:0]
	}
	switch {
	case err == nil:
		e.pktsOut.Add(1)
		if gso {
			e.gsoOut.Add(1)
		}
	case !isClosedErr(err):
		e.txErrors.Add(1)
		e.log.Debug("tun write", "err", err, "bytes", len(b)-headroom)
	}
}

// writeGSOVec writes one segment-offloaded packet to the device from
// gVisor's views of it (GSOVectorDevice), without copying them together
// and without allocating; the caller holds wmu (and keeps its reference
// to pkt). It counts the packet and returns the device's error, which it
// has counted and logged unless the device is closed.
func (e *linkEndpoint) writeGSOVec(pkt *gstack.PacketBuffer) error {
	putVnetHdr(e.vhdr[:], pkt)
	iov := append(e.iov[:0], e.vhdr[:])
	iov, size := appendPacketSlices(iov, pkt)
	e.bytesOut.Add(uint64(size))
	err := e.gsov.WriteGSOVec(iov)
	clear(iov)
	e.iov = iov[:0]
	switch {
	case err == nil:
		e.pktsOut.Add(1)
		e.gsoOut.Add(1)
	case !isClosedErr(err):
		e.txErrors.Add(1)
		e.log.Debug("tun gso write", "err", err, "bytes", size)
	}
	return err
}

// appendPacketSlices appends the slices of pkt's views that hold the
// packet (network header onwards) to iov, and returns it with their total
// length: PacketBuffer.AsSlices without allocating a slice per packet.
// The slices are pkt's own: valid while the caller holds its reference.
func appendPacketSlices(iov [][]byte, pkt *gstack.PacketBuffer) ([][]byte, int) {
	vl, off := pkt.AsViewList()
	size := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		iov = append(iov, b)
		size += len(b)
	}
	return iov, size
}

// appendPacket appends pkt's bytes, headers and payload, to b. It walks
// the packet's views in place: PacketBuffer.AsSlices allocates a slice of
// them for every packet, two per 1-byte round trip.
func appendPacket(b []byte, pkt *gstack.PacketBuffer) []byte {
	vl, skip := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		s := v.AsSlice()
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		b = append(b, s[skip:]...)
		skip = 0
	}
	return b
}

// vnetHdrLen is the size of Linux's struct virtio_net_hdr, which precedes
// each packet given to GSODevice.WriteGSO.
const vnetHdrLen = 10

// virtio_net_hdr constants (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4
)

// putVnetHdr writes the virtio_net_hdr describing pkt into b (vnetHdrLen
// bytes, native byte order as the TUN driver expects without TUNSETVNETBE).
// gVisor's TCP left a partial checksum (pseudo-header only) in every packet
// of a GSO connection; NEEDS_CSUM tells the kernel to treat it as
// CHECKSUM_PARTIAL. Segments longer than the MSS also carry gso_type and
// gso_size, so the kernel keeps them whole for local delivery (and
// segments them only if it must forward them).
func putVnetHdr(b []byte, pkt *gstack.PacketBuffer) {
	clear(b[:vnetHdrLen])
	g := pkt.GSOOptions
	ne := binary.NativeEndian
	ne.PutUint16(b[2:], uint16(pkt.HeaderSize()))
	if g.NeedsCsum {
		b[0] = vnetFlagNeedsCsum
		ne.PutUint16(b[6:], g.L3HdrLen)
		ne.PutUint16(b[8:], g.CsumOffset)
	}
	if pkt.Data().Size() > int(g.MSS) {
		switch g.Type {
		case gstack.GSOTCPv4:
			b[1] = vnetGSOTCPv4
		case gstack.GSOTCPv6:
			b[1] = vnetGSOTCPv6
		}
		ne.PutUint16(b[4:], g.MSS)
	}
}

func (e *linkEndpoint) dropPending(pkts []*gstack.PacketBuffer) {
	for _, p := range pkts {
		if p != nil {
			p.DecRef()
		}
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}

// MTU implements gstack.LinkEndpoint.
func (e *linkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements gstack.LinkEndpoint; the MTU is fixed at construction.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements gstack.LinkEndpoint: raw IP, no link header.
func (e *linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements gstack.LinkEndpoint.
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements gstack.LinkEndpoint.
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements gstack.LinkEndpoint.
//
// Receive: gVisor does not verify checksums again; the read loop does it
// before GRO, for every TCP and UDP packet the device did not vouch for
// (ValidatingDevice), and drops bad ones (Stats.BadChecksums). The
// capability is per link, not per packet (gVisor's NIC sets every packet's
// RXChecksumValidated from it, stack/nic.go), so gVisor cannot be told to
// check only some. Packets the Linux TUN vouches for are those it split
// from a GSO packet or completed a partial checksum of (correct by
// construction) and those the kernel validated (DATA_VALID): with offload
// on, all of a local app's traffic. Verifying those again in gVisor cost
// about an eighth of tunsocks' CPU at 3 Gbit/s (scripts/bench.sh, single
// stream MTU 1500, 2026-11-23, gVisor v0.0.0-20260905035102-160fafc42237:
// 0.30x -> 0.34x of the SOCKS-only path, together with the TIME-WAIT
// setting in setTCPOptions). Not verified: IP fragments (their transport
// checksum covers the reassembled datagram), except UDP datagrams larger
// than one packet, which handleUDPPacket checks after reassembly.
//
// Send: checksums are computed, except that TCP over a GSODevice leaves
// them to the kernel (see SupportedGSO): the Linux device's GRO, which the
// other packets go through, refuses packets whose checksum is not valid.
func (e *linkEndpoint) Capabilities() gstack.LinkEndpointCapabilities {
	return gstack.CapabilityRXChecksumOffload
}

// Attach implements gstack.LinkEndpoint.
func (e *linkEndpoint) Attach(d gstack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

// IsAttached implements gstack.LinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements gstack.LinkEndpoint: it waits for both loops to end.
// They end after Close and once the device is closed.
func (e *linkEndpoint) Wait() { e.wg.Wait() }

// ARPHardwareType implements gstack.LinkEndpoint.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements gstack.LinkEndpoint.
func (e *linkEndpoint) AddHeader(*gstack.PacketBuffer) {}

// ParseHeader implements gstack.LinkEndpoint.
func (e *linkEndpoint) ParseHeader(*gstack.PacketBuffer) bool { return true }

// SetOnCloseAction implements gstack.LinkEndpoint.
func (e *linkEndpoint) SetOnCloseAction(func()) {}

// Close implements gstack.LinkEndpoint: stop accepting packets, stop the
// writer and release queued packets. The reader stops when the device is
// closed (Stack.Close does that).
func (e *linkEndpoint) Close() {
	e.closeOnce.Do(func() {
		if e.acks != nil {
			e.acks.close()
		}
		e.qmu.Lock()
		e.closed = true
		q := e.queue
		e.queue = nil
		e.qmu.Unlock()
		e.dropPending(q)
		close(e.done)
	})
}

// SupportedGSO implements gstack.GSOEndpoint. With a device that takes
// segmentation-offloaded packets (the Linux TUN with IFF_VNET_HDR), gVisor's
// TCP sends segments of up to GSOMaxSize bytes with only the pseudo-header
// checksum, and the writer passes each one to the kernel whole (WriteGSO)
// with a virtio_net_hdr. Toward the app that replaces, per 64 KiB, about 45
// trips through gVisor's sender, 45 software checksums, and the device's
// GRO re-validating those checksums and copying the segments back together
// by one write. Measured by scripts/bench.sh on 2026-11-23 with gVisor
// v0.0.0-20260905035102-160fafc42237 (see the README's figures).
func (e *linkEndpoint) SupportedGSO() gstack.SupportedGSO {
	if e.gso == nil {
		return gstack.GSONotSupported
	}
	return gstack.HostGSOSupported
}

// GSOMaxSize implements gstack.GSOEndpoint.
func (e *linkEndpoint) GSOMaxSize() uint32 { return uint32(e.gsoMax) }

func (e *linkEndpoint) String() string {
	return fmt.Sprintf("link(mtu=%d batch=%d)", e.mtu, e.batch)
}

var (
	_ gstack.LinkEndpoint       = (*linkEndpoint)(nil)
	_ gstack.GSOEndpoint        = (*linkEndpoint)(nil)
	_ gstack.QueueingDiscipline = linkQDisc{}
)
