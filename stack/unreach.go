package stack

import (
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Unreachable tells the app that its datagrams to dst are refused (REJECT
// for UDP): an ICMP port unreachable (ICMPv6 port unreachable) from dst,
// quoting the headers of a datagram from the flow to dst, so the app's
// kernel matches it to the socket. A connected UDP socket then fails its
// next call with ECONNREFUSED at once instead of waiting for a timeout.
func (f *UDPFlow) Unreachable(dst netip.AddrPort) error {
	src, to := f.src.Addr().Unmap(), dst.Addr().Unmap()
	var (
		proto  tcpip.NetworkProtocolNumber
		tproto tcpip.TransportProtocolNumber
		quote  []byte
	)
	udp := make([]byte, header.UDPMinimumSize)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: f.src.Port(), DstPort: dst.Port(), Length: header.UDPMinimumSize})
	switch {
	case src.Is4() && to.Is4():
		proto, tproto = ipv4.ProtocolNumber, header.ICMPv4ProtocolNumber
		ip := make([]byte, header.IPv4MinimumSize)
		header.IPv4(ip).Encode(&header.IPv4Fields{
			TotalLength: header.IPv4MinimumSize + header.UDPMinimumSize, TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(to.As4()),
		})
		header.IPv4(ip).SetChecksum(^header.IPv4(ip).CalculateChecksum())
		quote = append(ip, udp...)
	case src.Is6() && to.Is6():
		proto, tproto = ipv6.ProtocolNumber, header.ICMPv6ProtocolNumber
		ip := make([]byte, header.IPv6MinimumSize)
		header.IPv6(ip).Encode(&header.IPv6Fields{
			PayloadLength: header.UDPMinimumSize, TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(to.As16()),
		})
		quote = append(ip, udp...)
	default:
		return fmt.Errorf("%w: %v -> %v", errFamilyMismatch, f.src, dst)
	}
	s := f.s
	r, terr := s.gs.FindRoute(nicID, tcpip.AddrFromSlice(to.AsSlice()), tcpip.AddrFromSlice(src.AsSlice()), proto, false)
	if terr != nil {
		return convertError(terr)
	}
	defer r.Release()

	hdrLen := header.ICMPv4MinimumSize
	if proto == ipv6.ProtocolNumber {
		hdrLen = header.ICMPv6MinimumSize
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: hdrLen + int(r.MaxHeaderLength()),
		Payload:            buffer.MakeWithData(quote),
	})
	defer pkt.DecRef()
	pkt.TransportProtocolNumber = tproto
	if proto == ipv4.ProtocolNumber {
		icmp := header.ICMPv4(pkt.TransportHeader().Push(header.ICMPv4MinimumSize))
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4PortUnreachable)
		icmp.SetChecksum(0)
		icmp.SetChecksum(header.ICMPv4Checksum(icmp, pkt.Data().Checksum()))
	} else {
		icmp := header.ICMPv6(pkt.TransportHeader().Push(header.ICMPv6MinimumSize))
		icmp.SetType(header.ICMPv6DstUnreachable)
		icmp.SetCode(header.ICMPv6PortUnreachable)
		icmp.SetChecksum(0)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: icmp, Src: r.LocalAddress(), Dst: r.RemoteAddress(), PayloadCsum: pkt.Data().Checksum(), PayloadLen: pkt.Data().Size(),
		}))
	}
	if terr := r.WritePacket(gstack.NetworkHeaderParams{Protocol: tproto, TTL: r.DefaultTTL()}, pkt); terr != nil {
		return convertError(terr)
	}
	return nil
}
