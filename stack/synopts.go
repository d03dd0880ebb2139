package stack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// stripSYNTimestamp turns the timestamp option of an app's SYN (a TCP
// segment with SYN and without ACK) into NOPs, in place, and fixes the TCP
// checksum; it reports whether it changed pkt. gVisor's TCP uses
// timestamps whenever the SYN offers them (it has no setting to decline),
// and then stamps and reads every segment: a clock read, an option built
// and one parsed per packet, 12 bytes each way, in gVisor and in the
// app's kernel. Between the app and this stack, one local hop, they buy
// nothing: RTT is measured once per window without them, PAWS guards
// against sequence numbers wrapping within a segment's lifetime on a
// path where nothing lingers, and the receive-buffer moderation measures
// its own RTT. On a 1-byte round trip they were 4-10% of the netstack's
// CPU (BenchmarkTCPRoundTrip with and without them, GOMAXPROCS=1).
// Only IPv4 and IPv6 without extension headers are looked at; pkt is a
// whole IP packet.
func stripSYNTimestamp(pkt []byte) bool {
	var tcp []byte
	var pseudo uint16
	switch {
	case len(pkt) >= header.IPv4MinimumSize && header.IPVersion(pkt) == header.IPv4Version:
		ip := header.IPv4(pkt)
		hl, total := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || hl < header.IPv4MinimumSize || total > len(pkt) ||
			total < hl || ip.FragmentOffset() != 0 || ip.Flags()&header.IPv4FlagMoreFragments != 0 {
			return false
		}
		tcp = pkt[hl:total]
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	case len(pkt) >= header.IPv6MinimumSize && header.IPVersion(pkt) == header.IPv6Version:
		ip := header.IPv6(pkt)
		total := header.IPv6MinimumSize + int(ip.PayloadLength())
		if tcpip.TransportProtocolNumber(ip.NextHeader()) != header.TCPProtocolNumber || total > len(pkt) {
			return false // extension headers too: not worth parsing here
		}
		tcp = pkt[header.IPv6MinimumSize:total]
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	default:
		return false
	}
	if len(tcp) < header.TCPMinimumSize {
		return false
	}
	t := header.TCP(tcp)
	if t.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
		return false
	}
	off := int(t.DataOffset())
	if off <= header.TCPMinimumSize || off > len(tcp) {
		return false
	}
	opts := tcp[header.TCPMinimumSize:off]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false
		}
		n := int(opts[i+1])
		if opts[i] == header.TCPOptionTS && n == header.TCPOptionTSLength {
			for j := i; j < i+n; j++ {
				opts[j] = header.TCPOptionNOP
			}
			binary.BigEndian.PutUint16(tcp[header.TCPChecksumOffset:], 0)
			binary.BigEndian.PutUint16(tcp[header.TCPChecksumOffset:], ^checksum.Checksum(tcp, pseudo))
			return true
		}
		i += n
	}
	return false
}
