package stack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// checksumsOK verifies the IPv4 header checksum and the TCP or UDP checksum
// of a packet read from the device (see linkEndpoint.Capabilities). It
// returns false only for a checksum that is definitely wrong. What it cannot
// judge passes: malformed packets (gVisor drops those itself), other
// protocols (ICMP is checked by its handler), IP fragments (the transport
// checksum covers the reassembled datagram), IPv6 extension headers other
// than hop-by-hop, routing and destination options.
func checksumsOK(pkt []byte) bool {
	if len(pkt) == 0 {
		return true
	}
	be := binary.BigEndian
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return true
		}
		ihl := int(pkt[0]&0xf) * 4
		total := int(be.Uint16(pkt[2:]))
		if ihl < 20 || total < ihl || total > len(pkt) {
			return true
		}
		if checksum.Checksum(pkt[:ihl], 0) != 0xffff {
			return false
		}
		if be.Uint16(pkt[6:])&0x3fff != 0 { // MF or a fragment offset
			return true
		}
		return transportOK(pkt[9], pkt[12:20], pkt[ihl:total], false)
	case 6:
		if len(pkt) < 40 {
			return true
		}
		total := 40 + int(be.Uint16(pkt[4:]))
		if total > len(pkt) {
			return true
		}
		next, off := pkt[6], 40
		for next == 0 || next == 43 || next == 60 { // hop-by-hop, routing, destination options
			if off+8 > total {
				return true
			}
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		}
		if off > total {
			return true
		}
		return transportOK(next, pkt[8:40], pkt[off:total], true)
	}
	return true
}

// transportOK verifies the TCP or UDP checksum of seg, the transport
// header and payload, with the pseudo-header of addrs (source and
// destination address, adjacent).
func transportOK(proto byte, addrs, seg []byte, v6 bool) bool {
	switch proto {
	case 6:
		if len(seg) < 20 {
			return true
		}
	case 17:
		if len(seg) < 8 {
			return true
		}
		ulen := int(binary.BigEndian.Uint16(seg[4:]))
		if ulen < 8 || ulen > len(seg) {
			return true
		}
		if !v6 && seg[6] == 0 && seg[7] == 0 {
			return true // IPv4 UDP without a checksum (IPv6 requires one)
		}
		seg = seg[:ulen]
	default:
		return true
	}
	sum := checksum.Checksum(addrs, 0)
	sum = checksum.Combine(sum, uint16(proto))
	sum = checksum.Combine(sum, uint16(len(seg)))
	return checksum.Checksum(seg, sum) == 0xffff
}
