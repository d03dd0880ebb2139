package stack

import (
	"encoding/binary"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recordingDevice is a Device that records what is written to it: one
// entry per Write call, each packet identified by its IPv4 ID. While gate
// is not nil, a Write waits for it to be closed (the device is busy).
type recordingDevice struct {
	mu      sync.Mutex
	writes  [][]uint16
	gate    chan struct{}
	entered chan struct{} // a Write has started (capacity 1)
}

func newRecordingDevice() *recordingDevice {
	return &recordingDevice{entered: make(chan struct{}, 1)}
}

func (d *recordingDevice) Read([][]byte, []int, int) (int, error) { return 0, io.EOF }
func (d *recordingDevice) BatchSize() int                         { return 16 }
func (d *recordingDevice) MTU() (int, error)                      { return 1500, nil }
func (d *recordingDevice) Close() error                           { return nil }

func (d *recordingDevice) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case d.entered <- struct{}{}:
	default:
	}
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		<-gate
	}
	ids := make([]uint16, len(bufs))
	for i, b := range bufs {
		ids[i] = header.IPv4(b[offset:]).ID()
	}
	d.mu.Lock()
	d.writes = append(d.writes, ids)
	d.mu.Unlock()
	return len(bufs), nil
}

func (d *recordingDevice) calls() [][]uint16 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]uint16(nil), d.writes...)
}

// outPacket builds an outbound IPv4 TCP packet as gVisor hands it to the
// link: headers pushed, payload bytes of data (0: a pure ACK), the IPv4 ID
// set to id so the device can tell the packets apart.
func outPacket(id uint16, payload int) *gstack.PacketBuffer {
	return outPacketOf(id, buffer.MakeWithData(make([]byte, payload)), 0)
}

// outPacketOf is outPacket with the given payload, and room for spare
// more bytes of headers than it pushes (as gVisor's TCP reserves for
// options it may not use).
func outPacketOf(id uint16, payload buffer.Buffer, spare int) *gstack.PacketBuffer {
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize + spare,
		Payload:            payload,
	})
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 1, AckNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
	return pushTestIPv4(pkt, id)
}

// pushTestIPv4 pushes the IPv4 header of 10.0.0.1 -> 10.0.0.2, with IPv4
// ID id, onto an outbound TCP packet whose TCP header is pushed, as
// gVisor's IPv4 endpoint does before the link gets it.
func pushTestIPv4(pkt *gstack.PacketBuffer, id uint16) *gstack.PacketBuffer {
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(pkt.Size()), ID: id, TTL: 64, Protocol: uint8(header.TCPProtocolNumber)})
	binary.BigEndian.PutUint32(ip[12:], 0x0a000001)
	binary.BigEndian.PutUint32(ip[16:], 0x0a000002)
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	return pkt
}

func writePackets(t *testing.T, e *linkEndpoint, pkts ...*gstack.PacketBuffer) {
	t.Helper()
	var l gstack.PacketBufferList
	for _, p := range pkts {
		l.PushBack(p)
	}
	n, err := e.WritePackets(l)
	l.DecRef()
	if err != nil || n != len(pkts) {
		t.Fatalf("WritePackets = %d, %v; want %d, nil", n, err, len(pkts))
	}
}

func newTestLink(dev Device) *linkEndpoint {
	return newLinkEndpoint(linkConfig{dev: dev, mtu: 1500, readBufSize: 1500, queueLen: 64, log: slog.New(slog.DiscardHandler)})
}

// A lone packet is written by the goroutine that produced it when the
// writer is idle, a pure ACK as well as a segment with a payload: the
// processor goroutine that acknowledges a round trip's request then wakes
// no writer goroutine. Without writeLoop running, nothing else could have
// written them.
func TestLinkWritesLonePacketsDirectly(t *testing.T) {
	dev := newRecordingDevice()
	e := newTestLink(dev)
	defer e.Close()
	writePackets(t, e, outPacket(1, 0)) // a pure ACK
	writePackets(t, e, outPacket(2, 1)) // a 1-byte reply
	got := dev.calls()
	if len(got) != 2 || len(got[0]) != 1 || got[0][0] != 1 || len(got[1]) != 1 || got[1][0] != 2 {
		t.Fatalf("device writes %v, want [[1] [2]] written at once by the caller", got)
	}
	if s := e.pktsOut.Load(); s != 2 {
		t.Errorf("pktsOut = %d, want 2", s)
	}
}

// While the writer is busy, lone packets are queued behind the packets it
// is writing, not written past them, and leave in one batch once it is
// free: the direct path keeps the order and the batching under load.
func TestLinkDirectWriteKeepsOrderAndBatches(t *testing.T) {
	dev := newRecordingDevice()
	dev.gate = make(chan struct{})
	e := newTestLink(dev)
	e.start()
	defer func() {
		e.Close()
		e.Wait()
	}()

	// Two packets at once go through the queue to writeLoop, which
	// blocks in the device.
	writePackets(t, e, outPacket(1, 100), outPacket(2, 100))
	select {
	case <-dev.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("writeLoop never wrote")
	}
	// Now lone packets, pure ACKs among them, arrive while it is busy.
	for id := uint16(3); id <= 7; id++ {
		writePackets(t, e, outPacket(id, int(id%2)))
	}
	dev.mu.Lock()
	close(dev.gate)
	dev.gate = nil
	dev.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for e.pktsOut.Load() < 7 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := dev.calls()
	var order []uint16
	for _, w := range got {
		order = append(order, w...)
	}
	for i, id := range order {
		if id != uint16(i+1) {
			t.Fatalf("packets left in the order %v (writes %v), want 1..7", order, got)
		}
	}
	if len(order) != 7 {
		t.Fatalf("device got %v, want packets 1..7", got)
	}
	if len(got) != 2 || len(got[1]) != 5 {
		t.Errorf("device writes %v, want [[1 2] [3 4 5 6 7]]: the packets queued while the writer was busy leave in one batch", got)
	}
}

// gsoCountingDevice is a recordingDevice that also takes
// segment-offloaded packets in pieces (GSOVectorDevice): it counts the
// calls and keeps the last one's bytes and number of pieces, in a buffer
// of its own (so that recording allocates nothing).
type gsoCountingDevice struct {
	*recordingDevice
	count, pieces int
	last          []byte
}

func (d *gsoCountingDevice) GSOMaxSize() int         { return 65535 }
func (d *gsoCountingDevice) WriteGSO(b []byte) error { return d.WriteGSOVec([][]byte{b}) }

func (d *gsoCountingDevice) WriteGSOVec(bufs [][]byte) error {
	d.count++
	d.pieces = len(bufs)
	d.last = d.last[:0]
	for _, b := range bufs {
		d.last = append(d.last, b...)
	}
	return nil
}

// gsoPacket is outPacket as a segment of a GSO connection, of payload
// bytes numbered by their offset, held in two views (as a segment made of
// two writes of the relay is), its headers behind unused header room.
func gsoPacket(id uint16, payload int) *gstack.PacketBuffer {
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i * 7)
	}
	two := buffer.MakeWithData(data[:payload/2])
	rest := buffer.MakeWithData(data[payload/2:])
	two.Merge(&rest)
	pkt := outPacketOf(id, two, 24)
	pkt.GSOOptions = gstack.GSO{Type: gstack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1460, L3HdrLen: header.IPv4MinimumSize, MaxSize: 65535}
	return pkt
}

// Writing a segment in pieces allocates nothing (PacketBuffer.AsSlices
// allocated a slice per segment), and the pieces hold the packet, from its
// network header on, after the virtio header.
func TestLinkGSOVecWriteAllocatesNothing(t *testing.T) {
	dev := &gsoCountingDevice{recordingDevice: newRecordingDevice(), last: make([]byte, 0, 1<<17)}
	e := newLinkEndpoint(linkConfig{dev: dev, mtu: 1500, readBufSize: 1500, queueLen: 64, gso: true, log: slog.New(slog.DiscardHandler)})
	defer e.Close()
	if e.gsov == nil {
		t.Fatal("the link does not write segments in pieces to a GSOVectorDevice")
	}
	pkt := gsoPacket(9, 60000)
	defer pkt.DecRef()
	want := pkt.ToView().AsSlice()
	e.wmu.Lock()
	a := testing.AllocsPerRun(100, func() {
		if err := e.writeGSOVec(pkt); err != nil {
			t.Fatal(err)
		}
	})
	e.wmu.Unlock()
	if a != 0 {
		t.Errorf("writeGSOVec allocates %v times a segment, want 0", a)
	}
	if dev.count != 101 {
		t.Errorf("%d writes reached the device, want 101", dev.count)
	}
	if dev.pieces < 3 {
		t.Errorf("the segment went in %d pieces, want the virtio header and the packet's views", dev.pieces)
	}
	hdr := dev.last[:vnetHdrLen]
	if hdr[0] != vnetFlagNeedsCsum || hdr[1] != vnetGSOTCPv4 || binary.NativeEndian.Uint16(hdr[4:]) != 1460 {
		t.Errorf("virtio header % x: want NEEDS_CSUM, TCPv4, gso_size 1460", hdr)
	}
	if got := dev.last[vnetHdrLen:]; string(got) != string(want) {
		t.Errorf("the device got %d bytes that differ from the packet's %d", len(got), len(want))
	}
}
