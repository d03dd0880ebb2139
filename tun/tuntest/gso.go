package tuntest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// VnetHdrLen is the size of the virtio_net_hdr in front of each WriteGSO
// packet (as tun.VnetHdrLen).
const VnetHdrLen = 10

// virtio_net_hdr values (include/uapi/linux/virtio_net.h).
const (
	vnetNeedsCsum = 1
	vnetGSONone   = 0
	vnetGSOTCPv4  = 1
	vnetGSOTCPv6  = 4
)

// SetGSO lets the device accept segmentation-offloaded packets up to max
// bytes through WriteGSO, as the Linux TUN does with IFF_VNET_HDR; 0 (the
// default) turns it off. Call it before the device is in use.
func (d *Device) SetGSO(max int) { d.gsoMax = max }

// GSOMaxSize reports the limit set by SetGSO.
func (d *Device) GSOMaxSize() int { return d.gsoMax }

// GSOCounters reports how many packets came through WriteGSO and how many
// of them were segmented (longer than their MSS).
func (d *Device) GSOCounters() (packets, segmented uint64) {
	return d.gsoPkts.Load(), d.gsoSegmented.Load()
}

// GSOVecWrites reports how many of the GSOCounters' packets came through
// WriteGSOVec.
func (d *Device) GSOVecWrites() uint64 { return d.gsoVec.Load() }

// WriteGSOVec is WriteGSO of the concatenation of bufs (the Linux TUN's
// writev).
func (d *Device) WriteGSOVec(bufs [][]byte) error {
	var b []byte
	for _, p := range bufs {
		b = append(b, p...)
	}
	if err := d.WriteGSO(b); err != nil {
		return err
	}
	d.gsoVec.Add(1)
	return nil
}

// WriteGSO does what the kernel does with a packet written to a TUN with a
// virtio_net_hdr: it completes a partial checksum (NEEDS_CSUM) and splits a
// TCP segment longer than gso_size into MSS-sized segments with their own
// sequence numbers, lengths, IPv4 IDs and checksums, then hands them to the
// peer. Anything malformed is an error, so a test fails on a header the
// kernel would reject or misread.
func (d *Device) WriteGSO(b []byte) error {
	if d.gsoMax == 0 {
		return errors.New("tuntest: WriteGSO without SetGSO")
	}
	if len(b) <= VnetHdrLen || len(b)-VnetHdrLen > d.gsoMax {
		return fmt.Errorf("tuntest: WriteGSO of %d bytes (limit %d + header)", len(b), d.gsoMax)
	}
	ne := binary.NativeEndian
	flags, gsoType := b[0], b[1]
	hdrLen, gsoSize := int(ne.Uint16(b[2:])), int(ne.Uint16(b[4:]))
	csumStart, csumOff := int(ne.Uint16(b[6:])), int(ne.Uint16(b[8:]))
	pkt := b[VnetHdrLen:]
	if flags&^vnetNeedsCsum != 0 {
		return fmt.Errorf("tuntest: unknown virtio flags %#x", flags)
	}
	if flags&vnetNeedsCsum != 0 && (csumStart+csumOff+2 > len(pkt) || csumStart < header.IPv4MinimumSize) {
		return fmt.Errorf("tuntest: checksum at %d+%d outside a %d-byte packet", csumStart, csumOff, len(pkt))
	}
	var segs [][]byte
	switch gsoType {
	case vnetGSONone:
		if len(pkt) > d.mtu {
			return fmt.Errorf("tuntest: unsegmented packet of %d bytes exceeds MTU %d", len(pkt), d.mtu)
		}
		p := append([]byte(nil), pkt...)
		if flags&vnetNeedsCsum != 0 {
			// The field holds the pseudo-header sum; fold in the rest.
			binary.BigEndian.PutUint16(p[csumStart+csumOff:], ^checksum.Checksum(p[csumStart:], 0))
		}
		segs = [][]byte{p}
	case vnetGSOTCPv4, vnetGSOTCPv6:
		var err error
		if segs, err = segmentTCP(pkt, gsoType == vnetGSOTCPv6, hdrLen, gsoSize, flags&vnetNeedsCsum != 0, d.mtu); err != nil {
			return err
		}
		d.gsoSegmented.Add(1)
	default:
		return fmt.Errorf("tuntest: unsupported gso_type %d", gsoType)
	}
	d.gsoPkts.Add(1)
	for _, s := range segs {
		select {
		case d.out <- s:
			d.writePkts.Add(1)
		case <-d.done:
			return os.ErrClosed
		}
	}
	return nil
}

// segmentTCP splits a TCP packet of hdrLen header bytes into segments of at
// most mss payload bytes, as Linux's tcp_gso_segment would.
func segmentTCP(pkt []byte, v6 bool, hdrLen, mss int, needsCsum bool, mtu int) ([][]byte, error) {
	var ipLen, tcpOff int
	if v6 {
		if len(pkt) < header.IPv6MinimumSize || header.IPVersion(pkt) != 6 || header.IPv6(pkt).NextHeader() != uint8(header.TCPProtocolNumber) {
			return nil, errors.New("tuntest: GSO TCPV6 on a packet that is not IPv6/TCP")
		}
		tcpOff = header.IPv6MinimumSize
	} else {
		if len(pkt) < header.IPv4MinimumSize || header.IPVersion(pkt) != 4 || header.IPv4(pkt).Protocol() != uint8(header.TCPProtocolNumber) {
			return nil, errors.New("tuntest: GSO TCPV4 on a packet that is not IPv4/TCP")
		}
		tcpOff = int(header.IPv4(pkt).HeaderLength())
		if int(header.IPv4(pkt).TotalLength()) != len(pkt) {
			return nil, fmt.Errorf("tuntest: IPv4 total length %d, packet %d", header.IPv4(pkt).TotalLength(), len(pkt))
		}
	}
	if !needsCsum {
		return nil, errors.New("tuntest: GSO packet without NEEDS_CSUM")
	}
	if len(pkt) < tcpOff+header.TCPMinimumSize {
		return nil, errors.New("tuntest: GSO packet shorter than its TCP header")
	}
	ipLen = tcpOff
	tcpHdrLen := int(header.TCP(pkt[tcpOff:]).DataOffset())
	if hdrLen != ipLen+tcpHdrLen {
		return nil, fmt.Errorf("tuntest: virtio hdr_len %d, headers are %d", hdrLen, ipLen+tcpHdrLen)
	}
	if mss <= 0 || hdrLen+mss > mtu {
		return nil, fmt.Errorf("tuntest: gso_size %d with %d header bytes does not fit MTU %d", mss, hdrLen, mtu)
	}
	payload := pkt[hdrLen:]
	if len(payload) <= mss {
		return nil, fmt.Errorf("tuntest: GSO packet with %d payload bytes, not more than gso_size %d", len(payload), mss)
	}
	tcp0 := header.TCP(pkt[tcpOff:])
	seq0, flags0 := tcp0.SequenceNumber(), tcp0.Flags()
	var id0 uint16
	if !v6 {
		id0 = header.IPv4(pkt).ID()
	}
	var segs [][]byte
	for i, off := 0, 0; off < len(payload); i, off = i+1, off+mss {
		end := min(off+mss, len(payload))
		s := make([]byte, 0, hdrLen+end-off)
		s = append(s, pkt[:hdrLen]...)
		s = append(s, payload[off:end]...)
		last := end == len(payload)
		var src, dst []byte
		if v6 {
			ip := header.IPv6(s)
			ip.SetPayloadLength(uint16(len(s) - header.IPv6MinimumSize))
			src, dst = ip.SourceAddressSlice(), ip.DestinationAddressSlice()
		} else {
			ip := header.IPv4(s)
			ip.SetTotalLength(uint16(len(s)))
			ip.SetID(id0 + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
			src, dst = ip.SourceAddressSlice(), ip.DestinationAddressSlice()
		}
		t := header.TCP(s[tcpOff:])
		t.SetSequenceNumber(seq0 + uint32(off))
		f := flags0
		if !last {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i > 0 {
			f &^= header.TCPFlagCwr
		}
		t.SetFlags(uint8(f))
		t.SetChecksum(0)
		sum := pseudoSum(src, dst, len(s)-tcpOff)
		t.SetChecksum(^checksum.Checksum(s[tcpOff:], sum))
		segs = append(segs, s)
	}
	return segs, nil
}

func pseudoSum(src, dst []byte, length int) uint16 {
	var xs uint16
	xs = checksum.Checksum(src, xs)
	xs = checksum.Checksum(dst, xs)
	var tail [4]byte
	tail[1] = uint8(header.TCPProtocolNumber)
	binary.BigEndian.PutUint16(tail[2:], uint16(length))
	return checksum.Checksum(tail[:], xs)
}
