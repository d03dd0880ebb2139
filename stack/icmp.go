package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
)

// ICMP echo. Apps ping arbitrary internet addresses through the TUN; the
// stack answers them itself so "ping" shows the tunnel is alive.
//
// gVisor's IPv6 answers echo requests for any address the promiscuous NIC
// accepts. Its IPv4 deliberately does not answer requests to "temporary"
// addresses (exactly what promiscuous mode creates), but still hands them to
// the ICMPv4 default transport handler, which is this: it writes the reply
// from the pinged address through the stack's route (spoofing allows any
// source) and tells gVisor the packet was handled.
func (s *Stack) handleICMPv4(id gstack.TransportEndpointID, pkt *gstack.PacketBuffer) bool {
	h := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(h) < header.ICMPv4MinimumSize || h.Type() != header.ICMPv4Echo || h.Code() != 0 {
		return false
	}
	if !s.gs.AllowICMPMessage() { // gVisor's global ICMP rate limit
		return true
	}
	netHdr := pkt.Network()
	from, to := netHdr.DestinationAddress(), netHdr.SourceAddress()
	if a := addrFromTCPIP(from); !a.IsValid() || a.IsMulticast() || a == netip.IPv4Unspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	v := gstack.PayloadSince(pkt.TransportHeader())
	defer v.Release()
	msg := v.AsSlice()
	if checksum.Checksum(msg, 0) != 0xffff {
		return true // corrupt request
	}
	reply := append([]byte(nil), msg...)
	rh := header.ICMPv4(reply)
	rh.SetType(header.ICMPv4EchoReply)
	rh.SetCode(0)
	rh.SetChecksum(0)
	rh.SetChecksum(^checksum.Checksum(reply, 0))

	r, terr := s.gs.FindRoute(nicID, from, to, ipv4.ProtocolNumber, false)
	if terr != nil {
		return true
	}
	defer r.Release()
	out := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: int(r.MaxHeaderLength()) + header.ICMPv4MinimumSize,
		Payload:            buffer.MakeWithData(reply[header.ICMPv4MinimumSize:]),
	})
	defer out.DecRef()
	copy(out.TransportHeader().Push(header.ICMPv4MinimumSize), reply[:header.ICMPv4MinimumSize])
	out.TransportProtocolNumber = icmp.ProtocolNumber4
	_ = r.WritePacket(gstack.NetworkHeaderParams{Protocol: icmp.ProtocolNumber4, TTL: r.DefaultTTL()}, out)
	return true
}
