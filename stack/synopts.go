package stack

import (
	"encoding/binary"

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
	tcp, ok := tcpSegment(pkt)
	if !ok {
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
	at, n := tcpOption(opts, header.TCPOptionTS)
	if n != header.TCPOptionTSLength {
		return false
	}
	for j := at; j < at+n; j++ {
		opts[j] = header.TCPOptionNOP
	}
	binary.BigEndian.PutUint16(tcp[header.TCPChecksumOffset:], 0)
	binary.BigEndian.PutUint16(tcp[header.TCPChecksumOffset:], ^checksum.Checksum(tcp, tcpPseudoSum(pkt, len(tcp))))
	return true
}
