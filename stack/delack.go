package stack

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// DefaultAckDelay is how long the link holds back a pure ACK of the
// netstack's TCP by default (TCPOptions.AckDelay).
const DefaultAckDelay = 500 * time.Microsecond

// ackSlots is the size of ackDelayer's table: flows whose last ACK the
// link remembers. A flow that shares its slot with another is simply not
// delayed until it gets the slot back; the table's memory does not grow
// with the connections (64 bytes a slot).
const ackSlots = 256

// ackDelayer holds back pure ACKs (ACK flag only, no payload, no SACK
// blocks) that the netstack's TCP sends toward the app, for at most
// delay, as Linux and lwIP delay theirs. gVisor's TCP acknowledges every
// segment it processes at once: for a request of a round trip that is a
// lone ACK, one device write and a trip through the app's kernel, and a
// moment later the reply carries the same acknowledgement. Held, the ACK
// is dropped when a later packet of its flow that acknowledges as much
// goes out first (the reply), and written when the delay expires.
//
// Only small acknowledgements wait, as Linux's "every second full-sized
// segment" rule does it: an ACK that acknowledges more than one MSS
// beyond the last acknowledgement written for the flow, and one that
// acknowledges nothing new (a duplicate, a window update), is written at
// once, so bulk transfers keep their ACK clock and duplicate ACKs their
// count. The last written acknowledgement of a flow is known from the
// table, which every outgoing TCP packet updates; a flow not in it (its
// slot taken by another) is not delayed.
type ackDelayer struct {
	delay time.Duration
	mss   uint32 // more new bytes than this: ACK at once
	seed  maphash.Seed
	// write hands packets whose wait ended, or that must precede a
	// packet of their flow, to the device path.
	write func(pkts []*gstack.PacketBuffer)

	// held counts the slots holding a packet; WritePackets skips the
	// table while it is 0 and the packet is no pure ACK.
	held atomic.Int32

	mu     sync.Mutex
	slots  []ackSlot // allocated at the first use
	timer  *time.Timer
	armed  bool
	closed bool
}

type ackSlot struct {
	key     tcpKey
	used    bool
	lastAck uint32               // the last acknowledgement written for key
	wnd     uint16               // the window written with it
	pkt     *gstack.PacketBuffer // the held ACK, nil if none
	ack     uint32               // pkt's acknowledgement number
	due     time.Time            // when pkt must go out
}

// tcpKey names a TCP connection by its addresses and ports as sent.
type tcpKey struct {
	addrs [32]byte // source, destination: 4 bytes each for IPv4
	ports uint32
}

func newAckDelayer(delay time.Duration, mtu uint32, write func([]*gstack.PacketBuffer)) *ackDelayer {
	mss := uint32(536)
	if mtu > header.IPv4MinimumSize+header.TCPMinimumSize+536 {
		mss = mtu - header.IPv4MinimumSize - header.TCPMinimumSize
	}
	return &ackDelayer{delay: delay, mss: mss, seed: maphash.MakeSeed(), write: write}
}

// tcpInfo is what the delayer needs of an outgoing packet.
type tcpInfo struct {
	key     tcpKey
	flags   header.TCPFlags
	ack     uint32
	wnd     uint16
	payload int
	sack    bool
}

// parse reads the TCP headers of an outgoing packet; ok is false for
// anything else.
func parseOut(pkt *gstack.PacketBuffer, ti *tcpInfo) bool {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize {
		return false
	}
	nh := pkt.NetworkHeader().Slice()
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(nh) < header.IPv4MinimumSize {
			return false
		}
		copy(ti.key.addrs[:8], nh[12:20])
	case header.IPv6ProtocolNumber:
		if len(nh) < header.IPv6MinimumSize {
			return false
		}
		copy(ti.key.addrs[:], nh[8:40])
	default:
		return false
	}
	ti.key.ports = binary.BigEndian.Uint32(th[0:4])
	ti.flags = th.Flags()
	ti.ack = th.AckNumber()
	ti.wnd = th.WindowSize()
	ti.payload = pkt.Data().Size()
	ti.sack = false
	if off := int(th.DataOffset()); off > header.TCPMinimumSize && off <= len(th) {
		ti.sack = hasSACK(th[header.TCPMinimumSize:off])
	}
	return true
}

// hasSACK reports whether TCP options carry SACK blocks (kind 5).
func hasSACK(opts []byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		case header.TCPOptionSACK:
			return true
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			return false
		}
		i += int(opts[i+1])
	}
	return false
}

func (d *ackDelayer) slot(k *tcpKey) *ackSlot {
	if d.slots == nil {
		d.slots = make([]ackSlot, ackSlots)
	}
	h := maphash.Comparable(d.seed, *k)
	return &d.slots[h%ackSlots]
}

// seqAfter reports whether a comes after b in sequence space.
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// out handles one outgoing packet. held is true when the delayer kept it
// (the caller must not write it; the delayer took a reference). first,
// if not nil, is a held packet of the same flow that must be written
// before this one.
func (d *ackDelayer) out(pkt *gstack.PacketBuffer, lone bool) (held bool, first *gstack.PacketBuffer) {
	var ti tcpInfo
	if !parseOut(pkt, &ti) {
		return false, nil
	}
	pure := ti.flags == header.TCPFlagAck && ti.payload == 0 && !ti.sack
	if !pure && d.held.Load() == 0 && !ti.flags.Contains(header.TCPFlagSyn) {
		// Nothing is held: only remember the acknowledgement if this
		// flow owns its slot (cheap path for data while no ACK waits).
		d.mu.Lock()
		s := d.slot(&ti.key)
		if s.used && s.key == ti.key && ti.flags.Contains(header.TCPFlagAck) && !seqAfter(s.lastAck, ti.ack) {
			s.lastAck, s.wnd = ti.ack, ti.wnd
		}
		d.mu.Unlock()
		return false, nil
	}
	var drop *gstack.PacketBuffer
	d.mu.Lock()
	s := d.slot(&ti.key)
	mine := s.used && s.key == ti.key
	if !mine {
		if s.pkt != nil || d.closed {
			// Another flow's ACK waits in this slot: this flow is not
			// delayed now.
			d.mu.Unlock()
			return false, nil
		}
		if !ti.flags.Contains(header.TCPFlagAck) {
			d.mu.Unlock()
			return false, nil
		}
		// Take the slot; the flow's last acknowledgement is unknown
		// until this packet goes out, so it is not held.
		*s = ackSlot{key: ti.key, used: true, lastAck: ti.ack, wnd: ti.wnd}
		d.mu.Unlock()
		return false, nil
	}
	if s.pkt != nil {
		// A held ACK of this flow: this packet replaces it when it
		// acknowledges as much and is no duplicate; otherwise the held
		// one goes first.
		covers := ti.flags.Contains(header.TCPFlagAck) && !seqAfter(s.ack, ti.ack)
		dup := pure && ti.ack == s.ack
		if covers && !dup {
			drop = s.pkt
		} else {
			first = s.pkt
			s.lastAck = s.ack
		}
		s.pkt = nil
		d.held.Add(-1)
	}
	if pure && lone && !d.closed && seqAfter(ti.ack, s.lastAck) && ti.ack-s.lastAck <= d.mss && first == nil {
		// Hold it: new bytes, less than a full segment's worth.
		s.pkt = pkt.IncRef()
		s.ack = ti.ack
		if drop == nil {
			// A replaced ACK's deadline stays.
			s.due = time.Now().Add(d.delay)
		}
		d.held.Add(1)
		d.arm()
		held = true
	} else {
		if ti.flags.Contains(header.TCPFlagAck) && !seqAfter(s.lastAck, ti.ack) {
			s.lastAck, s.wnd = ti.ack, ti.wnd
		}
		if ti.flags.Contains(header.TCPFlagFin) || ti.flags.Contains(header.TCPFlagRst) {
			// The flow ends: free its slot for others.
			s.used = false
		}
		if d.held.Load() == 0 && d.armed {
			d.timer.Stop()
			d.armed = false
		}
	}
	d.mu.Unlock()
	if drop != nil {
		drop.DecRef()
	}
	return held, first
}

// arm starts the timer if it is not running; d.mu is held.
func (d *ackDelayer) arm() {
	if d.armed {
		return
	}
	d.armed = true
	if d.timer == nil {
		d.timer = time.AfterFunc(d.delay, d.expire)
		return
	}
	d.timer.Reset(d.delay)
}

// expire writes the held ACKs whose time has come and re-arms the timer
// for the next one.
func (d *ackDelayer) expire() {
	now := time.Now()
	var due []*gstack.PacketBuffer
	d.mu.Lock()
	if !d.armed || d.closed {
		d.mu.Unlock()
		return
	}
	d.armed = false
	var next time.Time
	n := d.held.Load()
	for i := range d.slots {
		if n == 0 {
			break
		}
		s := &d.slots[i]
		if s.pkt == nil {
			continue
		}
		n--
		if !s.due.After(now) {
			due = append(due, s.pkt)
			s.pkt = nil
			s.lastAck = s.ack
			d.held.Add(-1)
		} else if next.IsZero() || s.due.Before(next) {
			next = s.due
		}
	}
	if !next.IsZero() {
		d.armed = true
		d.timer.Reset(next.Sub(now))
	}
	d.mu.Unlock()
	if len(due) > 0 {
		d.write(due)
	}
}

// close drops the held packets and stops the timer.
func (d *ackDelayer) close() {
	d.mu.Lock()
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
	d.armed = false
	var drop []*gstack.PacketBuffer
	for i := range d.slots {
		if p := d.slots[i].pkt; p != nil {
			drop = append(drop, p)
			d.slots[i].pkt = nil
		}
	}
	d.held.Store(0)
	d.mu.Unlock()
	for _, p := range drop {
		p.DecRef()
	}
}
