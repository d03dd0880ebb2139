package stack_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

func echoRequest4(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(id)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), payload)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

func echoRequest6(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize+len(payload))
	ip := header.IPv6(b)
	s, d := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	ip.Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(b) - header.IPv6MinimumSize), TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit: 64, SrcAddr: s, DstAddr: d,
	})
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6EchoRequest)
	icmp.SetIdent(id)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), payload)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp[:header.ICMPv6EchoMinimumSize], Src: s, Dst: d, PayloadCsum: checksum.Checksum(payload, 0), PayloadLen: len(payload)}))
	return b
}

// TestICMPEchoAnsweredForAnyAddress checks that pings to arbitrary internet
// addresses are answered by the stack itself (promiscuous NIC), with the
// pinged address as the source.
func TestICMPEchoAnsweredForAnyAddress(t *testing.T) {
	dev, peer := tuntest.NewPipe(1500)
	s, err := stack.New(context.Background(), stack.Config{Device: dev, Handler: handlerFuncs{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := []byte("ping payload")
	for _, tc := range []struct {
		src, dst string
		req      func(src, dst netip.Addr, id, seq uint16, payload []byte) []byte
	}{
		{"10.0.0.2", "198.51.100.1", echoRequest4},
		{"fd00::2", "2001:db8::77", echoRequest6},
	} {
		src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
		if err := peer.Inject(tc.req(src, dst, 0x1234, 7, payload)); err != nil {
			t.Fatal(err)
		}
		for {
			b, err := peer.Next(ctx)
			if err != nil {
				t.Fatalf("no echo reply from %v: %v", dst, err)
			}
			var from, to netip.Addr
			var ok bool
			var pl []byte
			if dst.Is4() {
				ip := header.IPv4(b)
				from, _ = netip.AddrFromSlice(ip.SourceAddressSlice())
				to, _ = netip.AddrFromSlice(ip.DestinationAddressSlice())
				icmp := header.ICMPv4(ip.Payload())
				ok = icmp.Type() == header.ICMPv4EchoReply && icmp.Ident() == 0x1234 && icmp.Sequence() == 7
				pl = icmp.Payload()
			} else {
				ip := header.IPv6(b)
				from, _ = netip.AddrFromSlice(ip.SourceAddressSlice())
				to, _ = netip.AddrFromSlice(ip.DestinationAddressSlice())
				icmp := header.ICMPv6(ip.Payload())
				ok = icmp.Type() == header.ICMPv6EchoReply && icmp.Ident() == 0x1234 && icmp.Sequence() == 7
				pl = icmp.Payload()
			}
			if !ok {
				continue // e.g. an NDP packet
			}
			if from != dst || to != src || string(pl) != string(payload) {
				t.Fatalf("echo reply %v -> %v payload %q", from, to, pl)
			}
			break
		}
	}
}
