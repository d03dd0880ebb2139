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
// netstack's TCP by default (TCPOptions.AckDelay). The timer is started
// at a hold when it is not running and left to run out (see out), so
// while round trips go on it fires about once per delay, and once more
// after the last. At 500 µs that was a wakeup every three or four 1-byte
// round trips through a copying SOCKS server (context switches per round
// trip ~2.5 -> ~3.3), at 5 ms still +0.15 to +0.3 (2.50-2.75 against
// 2.33-2.49 without the delay), at 40 ms none to see (2.35-2.46);
// scripts/benchtool, 2026-11-26, loaded VM. Linux's own delayed ACK
// waits 40 ms at least. The price of a longer delay is one stall of an
// app that waits for the ACK before it sends more (Nagle's algorithm),
// once per flow (see ackDelayer).
const DefaultAckDelay = 20 * time.Millisecond

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
//
// Waiting pays only when the reply comes within the delay (an upstream
// close by). When a held ACK's time runs out, its flow turns slow: its
// ACKs go out at once, as before, so a flow to a far upstream does not
// pay a timer for each request, and an app that waits for the ACK before
// it sends the rest of a request (Nagle's algorithm: two small writes,
// then a read) stalls once, not on every request. Two replies in a row
// that follow an ACK within the delay make the flow fast again.
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
	// delayed counts the ACKs held, spared those dropped because a later
	// packet covered them (Stats).
	delayed, spared atomic.Uint64

	mu     sync.Mutex
	slots  []ackSlot // allocated at the first use
	timer  *time.Timer
	armed  bool
	closed bool
	// starts counts the times arm started the timer (tests).
	starts int
}

type ackSlot struct {
	key     tcpKey
	used    bool
	lastAck uint32 // the last acknowledgement written for key
	// slow: the flow's last held ACK waited in vain, its ACKs are
	// written at once; wrote is when the last of those went out (zero
	// once a reply followed), paid how many replies in a row came
	// within the delay.
	slow  bool
	paid  uint8
	wrote time.Time
	pkt   *gstack.PacketBuffer // the held ACK, nil if none
	ack   uint32               // pkt's acknowledgement number
	due   time.Time            // when pkt must go out
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
	ti.payload = pkt.Data().Size()
	ti.sack = false
	if off := int(th.DataOffset()); off > header.TCPMinimumSize && off <= len(th) {
		ti.sack = hasSACK(th[header.TCPMinimumSize:off])
	}
	return true
}

// hasSACK reports whether TCP options carry SACK blocks (kind 5).
func hasSACK(opts []byte) bool {
	_, n := tcpOption(opts, header.TCPOptionSACK)
	return n > 0
}

// tcpOption finds the first option of the given kind in TCP options:
// its offset in opts and its length, with n = 0 when there is none
// before the end-of-options mark or before what cannot be parsed (a
// length under 2 or past the end).
func tcpOption(opts []byte, kind byte) (at, n int) {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return 0, 0
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return 0, 0
		}
		if opts[i] == kind {
			return i, int(opts[i+1])
		}
		i += int(opts[i+1])
	}
	return 0, 0
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
	ack := ti.flags.Contains(header.TCPFlagAck)
	pure := ti.flags == header.TCPFlagAck && ti.payload == 0 && !ti.sack
	var drop *gstack.PacketBuffer
	d.mu.Lock()
	s := d.slot(&ti.key)
	if !s.used || s.key != ti.key {
		if s.pkt == nil && ack && !d.closed {
			// Take the slot; the flow's last acknowledgement is
			// this packet's, so it is not held.
			*s = ackSlot{key: ti.key, used: true, lastAck: ti.ack}
		}
		// else another flow's ACK waits in this slot: this flow is
		// not delayed now.
		d.mu.Unlock()
		return false, nil
	}
	if s.pkt != nil {
		// A held ACK of this flow: this packet replaces it when it
		// acknowledges as much and is no duplicate; otherwise the held
		// one goes first.
		covers := ack && !seqAfter(s.ack, ti.ack)
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
	eligible := pure && lone && !d.closed && first == nil &&
		seqAfter(ti.ack, s.lastAck) && ti.ack-s.lastAck <= d.mss
	switch {
	case eligible && !s.slow:
		// Hold it: new bytes, less than a full segment's worth.
		s.pkt = pkt.IncRef()
		s.ack = ti.ack
		if drop == nil {
			// A replaced ACK's deadline stays.
			s.due = time.Now().Add(d.delay)
		}
		d.held.Add(1)
		d.delayed.Add(1)
		d.arm()
		d.mu.Unlock()
		if drop != nil {
			d.spared.Add(1)
			drop.DecRef()
		}
		return true, nil
	case eligible:
		// A slow flow (its last held ACK waited in vain) has its ACKs
		// written at once; see whether a reply would have carried it.
		if !s.wrote.IsZero() {
			s.paid = 0 // the previous one got no reply
		}
		s.wrote = time.Now()
	case s.slow && !s.wrote.IsZero() && ack && (ti.payload > 0 || ti.flags.Contains(header.TCPFlagFin)):
		// The reply to a request whose ACK a slow flow wrote at once:
		// two replies in a row within the delay make the flow fast
		// again.
		if time.Since(s.wrote) <= d.delay {
			s.paid++
		} else {
			s.paid = 0
		}
		s.wrote = time.Time{}
		if s.paid >= slowPaid {
			s.slow, s.paid = false, 0
		}
	}
	if ack && !seqAfter(s.lastAck, ti.ack) {
		s.lastAck = ti.ack
	}
	if ti.flags.Contains(header.TCPFlagFin) || ti.flags.Contains(header.TCPFlagRst) {
		// The flow ends: free its slot for others.
		s.used = false
	}
	// The timer is not stopped when the last held ACK is dropped: it
	// runs out and finds nothing due. Stopping it here and starting it
	// again at the next request's ACK moved the runtime's earliest timer
	// twice a round trip, and each move wakes a thread sleeping in the
	// poller (or an idle processor) to take it into account: a wakeup
	// per round trip, more than the ACK cost.
	d.mu.Unlock()
	if drop != nil {
		d.spared.Add(1)
		drop.DecRef()
	}
	return false, first
}

// slowPaid is how many replies in a row must follow a slow flow's
// immediate ACKs within the delay before its ACKs are held again.
const slowPaid = 2

// arm starts the timer if it is not running; d.mu is held.
func (d *ackDelayer) arm() {
	if d.armed {
		return
	}
	d.armed = true
	d.starts++
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
			// No reply came in time: the flow's next ACKs go out at
			// once (its upstream is far, or the app waits for the
			// ACK before it sends more: Nagle) until replies show
			// that waiting would pay.
			s.slow, s.paid, s.wrote = true, 0, time.Time{}
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
