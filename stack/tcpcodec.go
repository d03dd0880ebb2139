package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// The TCP packet codec of system TCP mode: parse a raw IPv4/IPv6 TCP
// packet, rewrite its addresses and ports in place with the checksums
// updated, and build bare segments (RSTs, the self-test's SYN).

// tcpPacket is the parsed view of one IPv4 or IPv6 TCP packet.
type tcpPacket struct {
	b        []byte
	v6       bool
	ihl      int // IP header length; TCP starts here
	src, dst netip.AddrPort
	flags    byte
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func parseTCP(b []byte) (tcpPacket, bool) {
	p := tcpPacket{b: b}
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		p.ihl = int(b[0]&0xf) * 4
		if b[9] != 6 || p.ihl < 20 || len(b) < p.ihl+20 || binary.BigEndian.Uint16(b[6:])&0x3fff != 0 {
			return p, false // not TCP, or a fragment
		}
		p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), binary.BigEndian.Uint16(b[p.ihl:]))
		p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), binary.BigEndian.Uint16(b[p.ihl+2:]))
	case len(b) >= 60 && b[0]>>4 == 6:
		if b[6] != 6 { // extension headers are left to gVisor
			return p, false
		}
		p.v6, p.ihl = true, 40
		p.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[40:]))
		p.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), binary.BigEndian.Uint16(b[42:]))
	default:
		return p, false
	}
	p.flags = b[p.ihl+13]
	return p, true
}

func (p *tcpPacket) seq() uint32 { return binary.BigEndian.Uint32(p.b[p.ihl+4:]) }

// rewrite sets the packet's addresses and ports and recomputes its checksums.
func (p *tcpPacket) rewrite(src, dst netip.AddrPort) {
	b := p.b
	if p.v6 {
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(b[8:24], s[:])
		copy(b[24:40], d[:])
	} else {
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(b[12:16], s[:])
		copy(b[16:20], d[:])
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], ^checksum.Checksum(b[:p.ihl], 0))
	}
	binary.BigEndian.PutUint16(b[p.ihl:], src.Port())
	binary.BigEndian.PutUint16(b[p.ihl+2:], dst.Port())
	p.src, p.dst = src, dst
	setTCPChecksum(b, p.ihl, p.v6)
}

// translate is rewrite for a packet whose checksums are valid (every
// packet the device reads): it updates them for the changed addresses and
// ports (RFC 1624) instead of summing the whole segment again.
func (p *tcpPacket) translate(src, dst netip.AddrPort) {
	b := p.b
	seg := b[p.ihl:]
	tcpSum := uint32(^binary.BigEndian.Uint16(seg[16:]))
	var ipSum uint32
	if !p.v6 {
		ipSum = uint32(^binary.BigEndian.Uint16(b[10:]))
	}
	// put replaces the 16-bit words at b[off:] with new, accounting for
	// the change in the TCP checksum (addresses are in its pseudo-header,
	// ports in its header) and, for IPv4 addresses, the header checksum.
	put := func(off int, new []byte, inIPHeader bool) {
		for i := 0; i < len(new); i += 2 {
			old := binary.BigEndian.Uint16(b[off+i:])
			nw := binary.BigEndian.Uint16(new[i:])
			tcpSum += uint32(^old) + uint32(nw)
			if inIPHeader {
				ipSum += uint32(^old) + uint32(nw)
			}
		}
		copy(b[off:], new)
	}
	var port [2]byte
	if p.v6 {
		s16, d16 := src.Addr().As16(), dst.Addr().As16()
		put(8, s16[:], false)
		put(24, d16[:], false)
	} else {
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		put(12, s4[:], true)
		put(16, d4[:], true)
		binary.BigEndian.PutUint16(b[10:], ^fold(ipSum))
	}
	binary.BigEndian.PutUint16(port[:], src.Port())
	put(p.ihl, port[:], false)
	binary.BigEndian.PutUint16(port[:], dst.Port())
	put(p.ihl+2, port[:], false)
	binary.BigEndian.PutUint16(seg[16:], ^fold(tcpSum))
	p.src, p.dst = src, dst
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// setTCPChecksum computes the TCP checksum of the packet in b.
func setTCPChecksum(b []byte, ihl int, v6 bool) {
	seg := b[ihl:]
	seg[16], seg[17] = 0, 0
	addrs := b[12:20]
	if v6 {
		addrs = b[8:40]
	}
	sum := checksum.Checksum(addrs, 0)
	sum = checksum.Combine(sum, 6)
	sum = checksum.Combine(sum, uint16(len(seg)))
	binary.BigEndian.PutUint16(seg[16:], ^checksum.Checksum(seg, sum))
}

// segment builds a bare TCP segment (IPv4 or IPv6 after src's family, no
// options, no payload) with valid checksums.
func segment(src, dst netip.AddrPort, seq, ack uint32, flags byte, window uint16) []byte {
	ihl := 20
	if src.Addr().Is6() {
		ihl = 40
	}
	b := make([]byte, ihl+20)
	if ihl == 40 {
		b[0] = 6 << 4
		binary.BigEndian.PutUint16(b[4:], 20)
		b[6], b[7] = 6, 64
	} else {
		b[0] = 4<<4 | 5
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		b[8], b[9] = 64, 6
	}
	tcp := b[ihl:]
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], window)
	p := tcpPacket{b: b, v6: ihl == 40, ihl: ihl}
	p.rewrite(src, dst)
	return b
}
