package tun

import (
	"encoding/binary"
	"errors"
	"fmt"

	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/tunsocks/tunsocks/stack"
)

// Reading a TUN opened with IFF_VNET_HDR.
//
// Every read returns a 10-byte virtio_net_hdr, then one packet, which may be
// a GSO "super-packet" (a TCP or UDP segment of up to 64 KiB that the kernel
// left for the device to split). wireguard-go's Read splits such packets too,
// but it drops the header, and with it the one thing the stack needs to know
// about checksums: whether the kernel already validated or will never have
// computed them. So the device reads the descriptor itself (splitVnet) and
// reports, per packet, whether its checksums are known good:
//
//   - GSO segments and packets with NEEDS_CSUM (CHECKSUM_PARTIAL: made on
//     this host, the checksum left to the "hardware") get their checksums
//     computed here, so they are correct by construction;
//   - DATA_VALID (CHECKSUM_UNNECESSARY: the receiving NIC or the kernel
//     verified them) is taken as it is;
//   - anything else (a raw socket's packet, a forwarded packet nobody
//     verified) is passed on unverified, for the stack to check.

// virtio_net_hdr values (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1
	vnetFlagDataValid = 2
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4
	vnetGSOUDPL4      = 5
	vnetGSOECN        = 0x80
)

const (
	protoTCP = 6
	protoUDP = 17
)

// errTooManySegments reports a GSO packet with more segments than buffers;
// the segments that fit were returned. It is wireguard-go's sentinel, which
// the stack's contract knows as non-fatal (stack.ErrPacketsLost).
var errTooManySegments = fmt.Errorf("tun: %w: %w", stack.ErrPacketsLost, wgtun.ErrTooManySegments)

// splitVnet turns one read of an IFF_VNET_HDR TUN (in: the header, then the
// packet) into packets at bufs[i][offset:], setting sizes[i] and, when valid
// is not nil, valid[i]. It returns how many packets it wrote. A GSO packet
// with more segments than len(bufs) yields the first len(bufs) and an error
// wrapping stack.ErrPacketsLost.
func splitVnet(in []byte, bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	if len(in) < VnetHdrLen {
		return 0, fmt.Errorf("tun: read of %d bytes, shorter than the virtio header", len(in))
	}
	ne := binary.NativeEndian
	flags, gsoType := in[0], in[1]&^vnetGSOECN
	gsoSize := int(ne.Uint16(in[4:]))
	csumStart, csumOff := int(ne.Uint16(in[6:])), int(ne.Uint16(in[8:]))
	pkt := in[VnetHdrLen:]

	if gsoType == vnetGSONone {
		out := bufs[0][offset:]
		if len(pkt) > len(out) {
			return 0, fmt.Errorf("tun: packet of %d bytes overflows a %d-byte buffer", len(pkt), len(out))
		}
		out = out[:copy(out, pkt)]
		ok := flags&vnetFlagDataValid != 0
		if flags&vnetFlagNeedsCsum != 0 {
			if csumStart+csumOff+2 > len(out) {
				return 0, fmt.Errorf("tun: checksum at %d+%d outside a %d-byte packet", csumStart, csumOff, len(out))
			}
			// The field holds the pseudo-header sum; fold in the rest.
			sum := ^checksum.Checksum(out[csumStart:], 0)
			if sum == 0 && csumOff == 6 { // UDP sends a zero sum as all ones
				sum = 0xffff
			}
			binary.BigEndian.PutUint16(out[csumStart+csumOff:], sum)
			ok = true
		}
		sizes[0] = len(out)
		if valid != nil {
			valid[0] = ok
		}
		return 1, nil
	}

	// A GSO packet: split it into segments of gsoSize payload bytes.
	if len(pkt) < 20 {
		return 0, fmt.Errorf("tun: GSO packet of %d bytes", len(pkt))
	}
	v6 := pkt[0]>>4 == 6
	var proto byte
	switch {
	case gsoType == vnetGSOTCPv4 && !v6, gsoType == vnetGSOTCPv6 && v6:
		proto = protoTCP
	case gsoType == vnetGSOUDPL4 && (v6 || pkt[0]>>4 == 4):
		proto = protoUDP
	default:
		return 0, fmt.Errorf("tun: GSO type %d on an IPv%d packet", gsoType, pkt[0]>>4)
	}
	// csum_start is where the transport header begins. The kernel's
	// hdr_len is not trusted (on the forwarding path it may cover the
	// whole first segment); the transport header says how long it is.
	minIP := 20
	if v6 {
		minIP = 40
	}
	if csumStart < minIP || csumStart+20 > len(pkt) {
		return 0, fmt.Errorf("tun: GSO csum_start %d in a %d-byte packet", csumStart, len(pkt))
	}
	thl := 8
	if proto == protoTCP {
		thl = int(pkt[csumStart+12]>>4) * 4
		if thl < 20 {
			return 0, fmt.Errorf("tun: GSO TCP header of %d bytes", thl)
		}
	}
	hdrLen := csumStart + thl
	if hdrLen > len(pkt) || gsoSize == 0 {
		return 0, fmt.Errorf("tun: GSO headers of %d bytes, segment size %d, in a %d-byte packet", hdrLen, gsoSize, len(pkt))
	}
	payload := pkt[hdrLen:]
	var seq uint32
	if proto == protoTCP {
		seq = binary.BigEndian.Uint32(pkt[csumStart+4:])
	}
	addrs := pkt[12:20]
	if v6 {
		addrs = pkt[8:40]
	}
	addrSum := checksum.Checksum(addrs, 0)
	n := 0
	for start := 0; start < len(payload) || start == 0; start += gsoSize {
		if n == len(bufs) {
			return n, errTooManySegments
		}
		end := min(start+gsoSize, len(payload))
		total := hdrLen + end - start
		out := bufs[n][offset:]
		if len(out) < total {
			return n, fmt.Errorf("tun: segment of %d bytes overflows a %d-byte buffer", total, len(out))
		}
		out = out[:total]
		copy(out, pkt[:hdrLen])
		copy(out[hdrLen:], payload[start:end])
		if v6 {
			binary.BigEndian.PutUint16(out[4:], uint16(total-40))
		} else {
			binary.BigEndian.PutUint16(out[2:], uint16(total))
			binary.BigEndian.PutUint16(out[4:], binary.BigEndian.Uint16(pkt[4:])+uint16(n))
			out[10], out[11] = 0, 0
			binary.BigEndian.PutUint16(out[10:], ^checksum.Checksum(out[:csumStart], 0))
		}
		th := out[csumStart:]
		var sumAt int
		if proto == protoTCP {
			binary.BigEndian.PutUint32(th[4:], seq+uint32(start))
			if end < len(payload) {
				th[13] &^= 0x01 | 0x08 // FIN and PSH only on the last segment
			}
			if n > 0 {
				th[13] &^= 0x80 // CWR only on the first
			}
			sumAt = 16
		} else {
			binary.BigEndian.PutUint16(th[4:], uint16(len(th)))
			sumAt = 6
		}
		th[sumAt], th[sumAt+1] = 0, 0
		sum := checksum.Combine(addrSum, uint16(proto))
		sum = checksum.Combine(sum, uint16(len(th)))
		csum := ^checksum.Checksum(th, sum)
		if csum == 0 && proto == protoUDP {
			csum = 0xffff
		}
		binary.BigEndian.PutUint16(th[sumAt:], csum)
		sizes[n] = total
		if valid != nil {
			valid[n] = true
		}
		n++
		if end == len(payload) {
			break
		}
	}
	return n, nil
}

// wholeTCP checks whether one read of an IFF_VNET_HDR TUN (in: the header,
// then the packet) is a TCP segment the kernel left for the device to split
// (TSO, gso_type TCPV4 or TCPV6), and if so makes it a packet the stack can
// take whole: its IP length field covers it all (and an IPv4 header sum
// matches). Its TCP checksum field keeps the partial sum the kernel left
// there: a segment built by this host's TCP from its own memory has no
// errors to find, so the stack takes it as validated. It returns the
// packet's bounds in in; ok is false for any other read (a plain packet, a
// UDP GSO packet), which splitVnet handles. err is for a GSO TCP packet
// whose headers do not add up.
func wholeTCP(in []byte) (start, end int, ok bool, err error) {
	if len(in) < VnetHdrLen+40 {
		return 0, 0, false, nil
	}
	gsoType := in[1] &^ vnetGSOECN
	if gsoType != vnetGSOTCPv4 && gsoType != vnetGSOTCPv6 {
		return 0, 0, false, nil
	}
	csumStart := int(binary.NativeEndian.Uint16(in[6:]))
	pkt := in[VnetHdrLen:]
	v6 := pkt[0]>>4 == 6
	minIP := 20
	switch {
	case gsoType == vnetGSOTCPv4 && pkt[0]>>4 == 4:
	case gsoType == vnetGSOTCPv6 && v6:
		minIP = 40
	default:
		return 0, 0, false, fmt.Errorf("tun: GSO type %d on an IPv%d packet", gsoType, pkt[0]>>4)
	}
	if v6 {
		// Extension headers before TCP: leave those to splitVnet.
		if pkt[6] != protoTCP || csumStart != 40 {
			return 0, 0, false, nil
		}
	} else if pkt[9] != protoTCP || csumStart != int(pkt[0]&0x0f)*4 {
		return 0, 0, false, nil // splitVnet judges it
	}
	if csumStart < minIP || csumStart+20 > len(pkt) {
		return 0, 0, false, fmt.Errorf("tun: GSO csum_start %d in a %d-byte packet", csumStart, len(pkt))
	}
	if thl := int(pkt[csumStart+12]>>4) * 4; thl < 20 || csumStart+thl > len(pkt) {
		return 0, 0, false, fmt.Errorf("tun: GSO TCP header of %d bytes in a %d-byte packet", thl, len(pkt))
	}
	if v6 {
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-40))
	} else {
		if len(pkt) > 0xffff {
			return 0, 0, false, fmt.Errorf("tun: GSO IPv4 packet of %d bytes", len(pkt))
		}
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		pkt[10], pkt[11] = 0, 0
		binary.BigEndian.PutUint16(pkt[10:], ^checksum.Checksum(pkt[:csumStart], 0))
	}
	return VnetHdrLen, len(in), true, nil
}

// wrapReadErr makes wireguard-go's non-fatal read error recognisable
// through the stack's contract.
func wrapReadErr(err error) error {
	if err != nil && errors.Is(err, wgtun.ErrTooManySegments) && !errors.Is(err, stack.ErrPacketsLost) {
		return fmt.Errorf("tun: %w: %w", stack.ErrPacketsLost, err)
	}
	return err
}
