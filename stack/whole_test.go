package stack

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// wholeDevice is a WholeSegmentDevice whose reads return, in turn, the
// packets of reads: a packet marked whole is put in big the way the Linux
// TUN's TSO segment is, behind 10 bytes of virtio header; any other is
// returned in bufs, unvalidated. Once they are used up reads fail with
// os.ErrClosed. It counts which read method the link used.
type wholeDevice struct {
	mu                sync.Mutex
	reads             []wholeRead
	wholeCalls, plain int
}

type wholeRead struct {
	pkt   []byte
	whole bool
}

func (d *wholeDevice) next() (wholeRead, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.reads) == 0 {
		return wholeRead{}, false
	}
	r := d.reads[0]
	d.reads = d.reads[1:]
	return r, true
}

func (d *wholeDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.Lock()
	d.plain++
	d.mu.Unlock()
	r, ok := d.next()
	if !ok {
		return 0, os.ErrClosed
	}
	sizes[0] = copy(bufs[0][offset:], r.pkt)
	return 1, nil
}

func (d *wholeDevice) WholeReadSize() int { return 64 << 10 }

func (d *wholeDevice) ReadWhole(big []byte, bufs [][]byte, sizes []int, valid []bool, offset int) (n, start, end int, err error) {
	d.mu.Lock()
	d.wholeCalls++
	d.mu.Unlock()
	r, ok := d.next()
	if !ok {
		return 0, 0, 0, os.ErrClosed
	}
	if r.whole {
		return 0, 10, 10 + copy(big[10:], r.pkt), nil
	}
	sizes[0] = copy(bufs[0][offset:], r.pkt)
	valid[0] = false
	return 1, 0, 0, nil
}

func (d *wholeDevice) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (d *wholeDevice) BatchSize() int                               { return 4 }
func (d *wholeDevice) MTU() (int, error)                            { return 1500, nil }
func (d *wholeDevice) Close() error                                 { return nil }

// dispatched is one packet the link handed the network layer.
type dispatched struct {
	data      []byte
	validated bool
	views     []int // the sizes of the packet's views, in order
}

type recordingDispatcher struct {
	mu   sync.Mutex
	pkts []dispatched
}

func (r *recordingDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *gstack.PacketBuffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var views []int
	for _, v := range pkt.AsSlices() {
		views = append(views, len(v))
	}
	r.pkts = append(r.pkts, dispatched{data: pkt.ToView().AsSlice(), validated: pkt.RXChecksumValidated, views: views})
}

func (r *recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *gstack.PacketBuffer) {}

func (r *recordingDispatcher) got() []dispatched {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dispatched(nil), r.pkts...)
}

// segmentPacket is an IPv4 TCP segment 10.0.0.2:40000 -> 10.0.0.1:80 with
// payload bytes of data, a valid IPv4 header and the TCP checksum given.
func segmentPacket(payload int, seq uint32, tcpSum uint16) []byte {
	pkt := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+payload)
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), ID: 7, TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 2}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 1})})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: seq, AckNum: 1, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagAck, WindowSize: 1000, Checksum: tcpSum})
	for i := range payload {
		pkt[header.IPv4MinimumSize+header.TCPMinimumSize+i] = byte(i * 13)
	}
	return pkt
}

// runLink runs the link's read loop over dev until dev's reads are used
// up, and returns what it delivered.
func runLink(t *testing.T, dev Device, tap PacketTap) []dispatched {
	t.Helper()
	e := newLinkEndpoint(linkConfig{dev: dev, mtu: 1500, readBufSize: 1500, queueLen: 64, tap: tap, log: slog.New(slog.DiscardHandler)})
	d := &recordingDispatcher{}
	e.Attach(d)
	e.start()
	select {
	case <-e.failed: // the reads are used up: the device reports itself closed
	case <-time.After(10 * time.Second):
		t.Fatal("the read loop did not stop")
	}
	e.Close()
	e.wg.Wait()
	return d.got()
}

// A TCP segment longer than the MTU that the device hands over whole (the
// kernel's TSO segment) reaches the network layer as one packet, byte for
// byte, taken as checksum-validated although its TCP checksum field holds
// only a partial sum, as the kernel leaves it; an ordinary packet read
// after it is still verified (and this one, with a bad checksum, dropped).
// Before the link read whole segments the first packet could not be read
// at all (it does not fit the MTU-sized read buffers).
func TestLinkDeliversWholeSegments(t *testing.T) {
	big := segmentPacket(30000, 1000, 0x1234)
	small := segmentPacket(100, 31000, 0x1234)
	good := segmentPacket(100, 31100, 0)
	seg := good[header.IPv4MinimumSize:]
	pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, header.IPv4(good).SourceAddress(), header.IPv4(good).DestinationAddress(), uint16(len(seg)))
	binary.BigEndian.PutUint16(seg[16:], ^checksum.Checksum(seg, pseudo))
	dev := &wholeDevice{reads: []wholeRead{{big, true}, {small, false}, {good, false}}}
	got := runLink(t, dev, nil)
	if dev.plain != 0 || dev.wholeCalls != 4 {
		t.Errorf("device reads: %d ReadWhole, %d Read; want 4 and 0", dev.wholeCalls, dev.plain)
	}
	if len(got) != 2 {
		t.Fatalf("delivered %d packets, want 2 (the whole segment and the good small one)", len(got))
	}
	if !bytes.Equal(got[0].data, big) || !got[0].validated {
		t.Errorf("first packet: %d bytes, validated %v; want the %d-byte segment unchanged, validated", len(got[0].data), got[0].validated, len(big))
	}
	if !bytes.Equal(got[1].data, good) {
		t.Errorf("second packet is not the good small one (%d bytes)", len(got[1].data))
	}
}

type discardTap struct{}

func (discardTap) WritePacket(time.Time, []byte) error { return nil }

// With a tap recording packets, the link does not read segments whole: a
// capture shows what was on the wire.
func TestLinkRecordedReadsAreNotWhole(t *testing.T) {
	good := segmentPacket(100, 1, 0)
	dev := &wholeDevice{reads: []wholeRead{{good, false}}}
	runLink(t, dev, discardTap{})
	if dev.wholeCalls != 0 || dev.plain == 0 {
		t.Errorf("device reads with a tap: %d ReadWhole, %d Read; want none and some", dev.wholeCalls, dev.plain)
	}
}

// A whole segment reaches the network layer with its IP and TCP headers
// in a view of their own and its payload in the view it was read into:
// gVisor's IPv4 layer reads the header again while it holds a reference
// to the header's view, and a header read from a shared view copies the
// whole view (buffer.PullUp), so with the headers in the payload's view
// every 64 KiB segment was copied once more. Seen failing (one view of
// the whole packet) before deliverView split the headers off.
func TestLinkWholeSegmentHeadersApart(t *testing.T) {
	big := segmentPacket(30000, 1000, 0x1234)
	dev := &wholeDevice{reads: []wholeRead{{big, true}}}
	got := runLink(t, dev, nil)
	if len(got) != 1 {
		t.Fatalf("delivered %d packets, want 1", len(got))
	}
	hl := header.IPv4MinimumSize + header.TCPMinimumSize
	if !bytes.Equal(got[0].data, big) {
		t.Errorf("the segment changed on its way (%d bytes, want %d)", len(got[0].data), len(big))
	}
	if want := []int{hl, len(big) - hl}; !slices.Equal(got[0].views, want) {
		t.Errorf("views of the delivered segment: %v; want %v (headers apart from the payload)", got[0].views, want)
	}
}

// tcpHeadersLen finds the headers of TCP segments over IPv4 (with
// options) and IPv6, and nothing in other packets or cut-off headers.
func TestTCPHeadersLen(t *testing.T) {
	v4 := segmentPacket(10, 1, 0)
	v4opt := make([]byte, 24+32+10) // 4 bytes of IP options, 12 of TCP options
	copy(v4opt, v4[:20])
	v4opt[0] = 0x46
	header.TCP(v4opt[24:]).Encode(&header.TCPFields{DataOffset: 32})
	v6 := make([]byte, 40+20+5)
	v6[0] = 0x60
	v6[6] = uint8(header.TCPProtocolNumber)
	header.TCP(v6[40:]).Encode(&header.TCPFields{DataOffset: 20})
	udp := append([]byte(nil), v4...)
	udp[9] = uint8(header.UDPProtocolNumber)
	badOff := append([]byte(nil), v4...)
	badOff[20+12] = 0x40 // data offset 16 < 20
	for _, c := range []struct {
		name  string
		pkt   []byte
		proto tcpip.NetworkProtocolNumber
		want  int
	}{
		{"ipv4", v4, header.IPv4ProtocolNumber, 40},
		{"ipv4 options", v4opt, header.IPv4ProtocolNumber, 56},
		{"ipv6", v6, header.IPv6ProtocolNumber, 60},
		{"udp", udp, header.IPv4ProtocolNumber, 0},
		{"tcp header cut", v4[:30], header.IPv4ProtocolNumber, 0},
		{"tcp options cut", v4opt[:40], header.IPv4ProtocolNumber, 0},
		{"data offset too small", badOff, header.IPv4ProtocolNumber, 0},
		{"ip header cut", v4[:10], header.IPv4ProtocolNumber, 0},
		{"other protocol", v4, 0, 0},
	} {
		if got := tcpHeadersLen(c.pkt, c.proto); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}
