package stack

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tcpOut builds an outbound IPv4 TCP packet of the flow 10.0.0.1:80 ->
// 10.0.0.2:port as gVisor hands it to the link, identified by its IPv4
// ID; sack adds a SACK block option.
func tcpOut(id, port uint16, ack uint32, flags header.TCPFlags, payload int, sack bool) *gstack.PacketBuffer {
	hdr := header.TCPMinimumSize
	if sack {
		hdr += 12 // NOP, NOP, SACK kind 5 len 10 (one block)
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + hdr,
		Payload:            buffer.MakeWithData(make([]byte, payload)),
	})
	tcp := header.TCP(pkt.TransportHeader().Push(hdr))
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: port, SeqNum: 1000, AckNum: ack, DataOffset: uint8(hdr), Flags: flags, WindowSize: 1000})
	if sack {
		o := tcp[header.TCPMinimumSize:]
		o[0], o[1], o[2], o[3] = header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionSACK, 10
		binary.BigEndian.PutUint32(o[4:], ack+100)
		binary.BigEndian.PutUint32(o[8:], ack+200)
	}
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	return pushTestIPv4(pkt, id)
}

const ackFlag = header.TCPFlagAck

func newDelayLink(dev Device, delay time.Duration) *linkEndpoint {
	e := newLinkEndpoint(linkConfig{dev: dev, mtu: 1500, readBufSize: 1500, queueLen: 64, ackDelay: delay, log: newTestLink(dev).log})
	return e
}

// written lists the IDs of the packets the device got, in order.
func written(dev *recordingDevice) []uint16 {
	var ids []uint16
	for _, w := range dev.calls() {
		ids = append(ids, w...)
	}
	return ids
}

func wantWritten(t *testing.T, dev *recordingDevice, want ...uint16) {
	t.Helper()
	if got := written(dev); !slices.Equal(got, want) {
		t.Fatalf("device got packets %v, want %v", got, want)
	}
}

// The ACK of a small request waits; the reply, which acknowledges as much,
// goes out in its place.
func TestAckDelaySparedByReply(t *testing.T) {
	dev := newRecordingDevice()
	e := newDelayLink(dev, time.Minute)
	defer e.Close()
	writePackets(t, e, tcpOut(1, 5000, 1, header.TCPFlagSyn|ackFlag, 0, false)) // SYN-ACK
	writePackets(t, e, tcpOut(2, 5000, 2, ackFlag, 0, false))                   // ACK of 1 byte: held
	wantWritten(t, dev, 1)
	writePackets(t, e, tcpOut(3, 5000, 2, ackFlag|header.TCPFlagPsh, 1, false)) // the reply
	wantWritten(t, dev, 1, 3)
	// Again, with a FIN answering the app's FIN.
	writePackets(t, e, tcpOut(4, 5000, 3, ackFlag, 0, false))
	writePackets(t, e, tcpOut(5, 5000, 3, ackFlag|header.TCPFlagFin, 0, false))
	wantWritten(t, dev, 1, 3, 5)
	if d, s := e.acks.delayed.Load(), e.acks.spared.Load(); d != 2 || s != 2 {
		t.Errorf("delayed %d, spared %d; want 2, 2", d, s)
	}
}

// A held ACK nobody replies to goes out when the delay ends; the flow's
// next ACKs then go out at once (slow), until two replies in a row come
// within the delay of an ACK.
func TestAckDelayExpiresThenFlowIsSlow(t *testing.T) {
	dev := newRecordingDevice()
	e := newDelayLink(dev, 20*time.Millisecond)
	defer e.Close()
	writePackets(t, e, tcpOut(1, 5000, 1, header.TCPFlagSyn|ackFlag, 0, false))
	writePackets(t, e, tcpOut(2, 5000, 2, ackFlag, 0, false))
	deadline := time.Now().Add(time.Minute)
	for len(written(dev)) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	wantWritten(t, dev, 1, 2)
	// From here on replies must come "within the delay" however slow
	// the machine is.
	e.acks.mu.Lock()
	e.acks.delay = time.Hour
	e.acks.mu.Unlock()
	// Slow now: written at once, and a reply follows soon.
	writePackets(t, e, tcpOut(3, 5000, 3, ackFlag, 0, false))
	wantWritten(t, dev, 1, 2, 3)
	writePackets(t, e, tcpOut(4, 5000, 3, ackFlag|header.TCPFlagPsh, 1, false))
	writePackets(t, e, tcpOut(5, 5000, 4, ackFlag, 0, false))
	wantWritten(t, dev, 1, 2, 3, 4, 5)
	writePackets(t, e, tcpOut(6, 5000, 4, ackFlag|header.TCPFlagPsh, 1, false))
	// Two replies within the delay: held again.
	writePackets(t, e, tcpOut(7, 5000, 5, ackFlag, 0, false))
	wantWritten(t, dev, 1, 2, 3, 4, 5, 6)
	writePackets(t, e, tcpOut(8, 5000, 5, ackFlag|header.TCPFlagPsh, 1, false))
	wantWritten(t, dev, 1, 2, 3, 4, 5, 6, 8)
}

// What must not wait goes out at once: an ACK of more than one MSS of
// new data (bulk keeps its ACK clock), one that acknowledges nothing new
// (a window update), one with SACK blocks, and packets of a flow the
// table does not know. A duplicate of a held ACK sends both, in order.
func TestAckDelayWritesAtOnce(t *testing.T) {
	dev := newRecordingDevice()
	e := newDelayLink(dev, time.Minute)
	defer e.Close()
	writePackets(t, e, tcpOut(1, 5000, 1, ackFlag, 0, false)) // unknown flow: takes the slot, written
	wantWritten(t, dev, 1)
	writePackets(t, e, tcpOut(2, 5000, 1+1461, ackFlag, 0, false)) // > 1 MSS (1460)
	wantWritten(t, dev, 1, 2)
	writePackets(t, e, tcpOut(3, 5000, 1+1461, ackFlag, 0, false)) // nothing new
	wantWritten(t, dev, 1, 2, 3)
	writePackets(t, e, tcpOut(4, 5000, 1462+10, ackFlag, 0, true)) // SACK
	wantWritten(t, dev, 1, 2, 3, 4)
	writePackets(t, e, tcpOut(5, 5000, 1472+10, ackFlag, 0, false)) // held
	wantWritten(t, dev, 1, 2, 3, 4)
	writePackets(t, e, tcpOut(6, 5000, 1472+10, ackFlag, 0, false)) // its duplicate
	wantWritten(t, dev, 1, 2, 3, 4, 5, 6)
	// Several at once are never held.
	writePackets(t, e, tcpOut(7, 5000, 1500, ackFlag, 0, false), tcpOut(8, 5000, 1501, ackFlag, 0, false))
	if e.acks.delayed.Load() != 1 {
		t.Errorf("delayed %d, want 1", e.acks.delayed.Load())
	}
}

// A held ACK is dropped on Close, and its timer stops.
func TestAckDelayClose(t *testing.T) {
	dev := newRecordingDevice()
	e := newDelayLink(dev, 20*time.Millisecond)
	writePackets(t, e, tcpOut(1, 5000, 1, header.TCPFlagSyn|ackFlag, 0, false))
	pkt := tcpOut(2, 5000, 2, ackFlag, 0, false)
	writePackets(t, e, pkt.IncRef())
	e.Close()
	time.Sleep(50 * time.Millisecond)
	wantWritten(t, dev, 1)
	if pkt.ReadRefs() != 1 {
		t.Errorf("the held packet has %d references after Close, want 1 (ours)", pkt.ReadRefs())
	}
	pkt.DecRef()
}

// Round trips whose replies come within the delay start the timer once,
// not once each: the timer runs out and finds nothing due rather than
// being stopped at every reply and started again at the next request,
// since every start or stop of the runtime's earliest timer wakes a
// thread sleeping in the poller.
func TestAckDelayTimerNotRestartedPerRoundTrip(t *testing.T) {
	dev := newRecordingDevice()
	e := newDelayLink(dev, time.Minute)
	defer e.Close()
	writePackets(t, e, tcpOut(1, 5000, 1, header.TCPFlagSyn|ackFlag, 0, false))
	const trips = 50
	for i := range uint32(trips) {
		writePackets(t, e, tcpOut(uint16(2+2*i), 5000, 2+i, ackFlag, 0, false))                   // held
		writePackets(t, e, tcpOut(uint16(3+2*i), 5000, 2+i, ackFlag|header.TCPFlagPsh, 1, false)) // the reply
	}
	if d, s := e.acks.delayed.Load(), e.acks.spared.Load(); d != trips || s != trips {
		t.Fatalf("delayed %d, spared %d; want %d, %d", d, s, trips, trips)
	}
	e.acks.mu.Lock()
	starts := e.acks.starts
	e.acks.mu.Unlock()
	if starts != 1 {
		t.Errorf("the ACK timer was started %d times in %d round trips, want once", starts, trips)
	}
}

// appendPacket copies a packet's headers and payload, as AsSlices would
// give them, without allocating (AsSlices made a slice per packet, two
// per 1-byte round trip).
func TestAppendPacketAllocatesNothing(t *testing.T) {
	pkt := tcpOut(1, 5000, 2, ackFlag|header.TCPFlagPsh, 300, false)
	defer pkt.DecRef()
	more := buffer.MakeWithData([]byte("and a second view of payload"))
	pkt.Data().MergeBuffer(&more)
	var want []byte
	for _, s := range pkt.AsSlices() {
		want = append(want, s...)
	}
	b := make([]byte, 0, 2048)
	b = appendPacket(b[:headroom], pkt)
	if got := b[headroom:]; !slices.Equal(got, want) {
		t.Fatalf("appendPacket gave %d bytes, not the packet's %d", len(got), len(want))
	}
	if a := testing.AllocsPerRun(100, func() { b = appendPacket(b[:headroom], pkt) }); a != 0 {
		t.Errorf("%.1f allocations per packet, want 0", a)
	}
}
