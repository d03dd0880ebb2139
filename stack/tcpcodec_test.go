package stack

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpSeg builds an IPv4 or IPv6 TCP packet with valid checksums.
func tcpSeg(t testing.TB, src, dst netip.AddrPort, seq, ack uint32, syn, ackf, fin, rst bool, payload string) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack,
		SYN: syn, ACK: ackf, FIN: fin, RST: rst, Window: 65535}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func checksumOf(b []byte) uint16 { return checksum.Checksum(b, 0) }

// checkPacket verifies the packet's checksums and returns its parsed view.
func checkPacket(t *testing.T, b []byte) tcpPacket {
	t.Helper()
	p, ok := parseTCP(b)
	if !ok {
		t.Fatalf("not a TCP packet: % x", b)
	}
	seg := header.TCP(b[p.ihl:])
	payload := b[p.ihl+int(seg.DataOffset()):]
	src := tcpip.AddrFromSlice(p.src.Addr().AsSlice())
	dst := tcpip.AddrFromSlice(p.dst.Addr().AsSlice())
	if !p.v6 && !header.IPv4(b).IsChecksumValid() {
		t.Errorf("bad IPv4 header checksum: % x", b)
	}
	if !seg.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload))) {
		t.Errorf("bad TCP checksum: % x", b)
	}
	return p
}

// TestTranslateMatchesRewrite: the incremental checksum update gives the
// same bytes as summing the packet again, for random packets and
// addresses of both families.
func TestTranslateMatchesRewrite(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	addr := func(v6 bool) netip.Addr {
		if v6 {
			var a [16]byte
			for i := range a {
				a[i] = byte(r.Uint32())
			}
			return netip.AddrFrom16(a)
		}
		return netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	for i := range 2000 {
		v6 := i%2 == 1
		ap := func() netip.AddrPort { return netip.AddrPortFrom(addr(v6), uint16(r.Uint32())) }
		payload := make([]byte, r.IntN(1400))
		for j := range payload {
			payload[j] = byte(r.Uint32())
		}
		pkt := tcpSeg(t, ap(), ap(), r.Uint32(), r.Uint32(), i%3 == 0, true, false, false, string(payload))
		full := append([]byte(nil), pkt...)
		src, dst := ap(), ap()
		a, _ := parseTCP(pkt)
		a.translate(src, dst)
		b, _ := parseTCP(full)
		b.rewrite(src, dst)
		if !bytes.Equal(pkt, full) {
			t.Fatalf("packet %d: translate and rewrite differ:\n% x\n% x", i, pkt[:min(len(pkt), 64)], full[:min(len(full), 64)])
		}
	}
}
