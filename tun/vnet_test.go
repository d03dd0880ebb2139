package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/tunsocks/tunsocks/stack"
)

// vnetHdr builds a virtio_net_hdr.
func vnetHdr(flags, gsoType uint8, gsoSize, csumStart, csumOff int) []byte {
	h := make([]byte, VnetHdrLen)
	h[0], h[1] = flags, gsoType
	ne := binary.NativeEndian
	ne.PutUint16(h[4:], uint16(gsoSize))
	ne.PutUint16(h[6:], uint16(csumStart))
	ne.PutUint16(h[8:], uint16(csumOff))
	return h
}

// ipPacket builds an IPv4 or IPv6 packet carrying a TCP (20-byte header
// with 12 bytes of options) or UDP header and payload. The transport
// checksum field holds the pseudo-header sum, as the kernel leaves it for
// CHECKSUM_PARTIAL; the IPv4 header checksum is valid.
func ipPacket(v6, tcp bool, payload []byte, tcpFlags uint8) (pkt []byte, ipLen, thl int) {
	ipLen, thl = 20, 8
	if v6 {
		ipLen = 40
	}
	if tcp {
		thl = 32
	}
	pkt = make([]byte, ipLen+thl+len(payload))
	proto := uint8(17)
	if tcp {
		proto = 6
	}
	var src, dst tcpip.Address
	if v6 {
		src, dst = tcpip.AddrFrom16([16]byte{0xfd, 9, 15: 2}), tcpip.AddrFrom16([16]byte{0xfd, 9, 15: 1})
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(thl + len(payload)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
			HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		src, dst = tcpip.AddrFrom4([4]byte{10, 9, 0, 2}), tcpip.AddrFrom4([4]byte{10, 9, 0, 1})
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), ID: 100, Flags: header.IPv4FlagDontFragment, TTL: 64,
			Protocol: proto, SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	th := pkt[ipLen:]
	binary.BigEndian.PutUint16(th[0:], 5000)
	binary.BigEndian.PutUint16(th[2:], 80)
	if tcp {
		binary.BigEndian.PutUint32(th[4:], 0xfffff000) // wraps around while split
		th[12] = byte(thl/4) << 4
		th[13] = tcpFlags
		binary.BigEndian.PutUint16(th[14:], 65535)
	} else {
		binary.BigEndian.PutUint16(th[4:], uint16(thl+len(payload)))
	}
	copy(pkt[ipLen+thl:], payload)
	sum := checksum.Combine(checksum.Checksum(src.AsSlice(), 0), checksum.Checksum(dst.AsSlice(), 0))
	sum = checksum.Combine(sum, uint16(proto))
	sum = checksum.Combine(sum, uint16(thl+len(payload)))
	at := 6
	if tcp {
		at = 16
	}
	binary.BigEndian.PutUint16(th[at:], sum)
	return pkt, ipLen, thl
}

// transportValid verifies the IPv4 header and TCP/UDP checksums of pkt.
func transportValid(t *testing.T, pkt []byte, ipLen int) {
	t.Helper()
	src, dst, proto := pkt[8:24], pkt[24:40], pkt[6]
	if pkt[0]>>4 == 4 {
		if !header.IPv4(pkt).IsChecksumValid() {
			t.Errorf("bad IPv4 header checksum")
		}
		src, dst, proto = pkt[12:16], pkt[16:20], pkt[9]
	}
	seg := pkt[ipLen:]
	sum := checksum.Combine(checksum.Checksum(src, 0), checksum.Checksum(dst, 0))
	sum = checksum.Combine(sum, uint16(proto))
	sum = checksum.Combine(sum, uint16(len(seg)))
	if checksum.Checksum(seg, sum) != 0xffff {
		t.Errorf("bad transport checksum in % x", pkt[:min(len(pkt), 60)])
	}
}

func newBufs(n, size int) ([][]byte, []int, []bool) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+size)
	}
	return bufs, make([]int, n), make([]bool, n)
}

// TestSplitVnetGSO: a GSO packet splits into segments with their own
// lengths, IPv4 IDs, sequence numbers, flags and checksums, all reported
// valid, whose payloads make the original again.
func TestSplitVnetGSO(t *testing.T) {
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name    string
		v6, tcp bool
		typ     uint8
	}{
		{"TCPv4", false, true, vnetGSOTCPv4},
		{"TCPv6", true, true, vnetGSOTCPv6},
		{"UDPv4", false, false, vnetGSOUDPL4},
		{"UDPv6", true, false, vnetGSOUDPL4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const mss = 1400
			pkt, ipLen, thl := ipPacket(tc.v6, tc.tcp, payload, 0x80|0x10|0x08|0x01) // CWR ACK PSH FIN
			csumOff := 6
			if tc.tcp {
				csumOff = 16
			}
			in := append(vnetHdr(vnetFlagNeedsCsum, tc.typ, mss, ipLen, csumOff), pkt...)
			bufs, sizes, valid := newBufs(8, 2000)
			n, err := splitVnet(in, bufs, sizes, valid, Headroom)
			if err != nil || n != 4 {
				t.Fatalf("splitVnet = %d, %v; want 4 segments", n, err)
			}
			var got []byte
			for i := range n {
				seg := bufs[i][Headroom : Headroom+sizes[i]]
				if !valid[i] {
					t.Errorf("segment %d not reported valid", i)
				}
				transportValid(t, seg, ipLen)
				want := min(mss, len(payload)-i*mss)
				if len(seg) != ipLen+thl+want {
					t.Fatalf("segment %d: %d bytes, want %d", i, len(seg), ipLen+thl+want)
				}
				if tc.v6 {
					if l := binary.BigEndian.Uint16(seg[4:]); int(l) != len(seg)-40 {
						t.Errorf("segment %d: payload length %d", i, l)
					}
				} else if id := binary.BigEndian.Uint16(seg[4:]); id != uint16(100+i) || int(binary.BigEndian.Uint16(seg[2:])) != len(seg) {
					t.Errorf("segment %d: IPv4 ID %d, total length %d", i, id, binary.BigEndian.Uint16(seg[2:]))
				}
				th := seg[ipLen:]
				if tc.tcp {
					if seq := binary.BigEndian.Uint32(th[4:]); seq != 0xfffff000+uint32(i*mss) {
						t.Errorf("segment %d: seq %#x", i, seq)
					}
					last := i == n-1
					if fin, psh, cwr := th[13]&0x01 != 0, th[13]&0x08 != 0, th[13]&0x80 != 0; fin != last || psh != last || cwr != (i == 0) || th[13]&0x10 == 0 {
						t.Errorf("segment %d: flags %#x", i, th[13])
					}
				} else if l := binary.BigEndian.Uint16(th[4:]); int(l) != len(th) {
					t.Errorf("segment %d: UDP length %d, want %d", i, l, len(th))
				}
				got = append(got, seg[ipLen+thl:]...)
			}
			if !bytes.Equal(got, payload) {
				t.Error("payloads do not make the original again")
			}
		})
	}
}

// TestSplitVnetChecksumKnowledge: what the header says about checksums is
// what ReadValidated reports.
func TestSplitVnetChecksumKnowledge(t *testing.T) {
	udp, ipLen, _ := ipPacket(false, false, []byte("hello"), 0)
	t.Run("partial checksum is completed", func(t *testing.T) {
		bufs, sizes, valid := newBufs(1, 2000)
		n, err := splitVnet(append(vnetHdr(vnetFlagNeedsCsum, vnetGSONone, 0, ipLen, 6), udp...), bufs, sizes, valid, Headroom)
		if err != nil || n != 1 || !valid[0] {
			t.Fatalf("= %d, %v, valid %v", n, err, valid[0])
		}
		transportValid(t, bufs[0][Headroom:Headroom+sizes[0]], ipLen)
	})
	t.Run("data valid is trusted", func(t *testing.T) {
		bufs, sizes, valid := newBufs(1, 2000)
		n, err := splitVnet(append(vnetHdr(vnetFlagDataValid, vnetGSONone, 0, 0, 0), udp...), bufs, sizes, valid, Headroom)
		if err != nil || n != 1 || !valid[0] || !bytes.Equal(bufs[0][Headroom:Headroom+sizes[0]], udp) {
			t.Fatalf("= %d, %v, valid %v", n, err, valid[0])
		}
	})
	t.Run("nothing said, nothing known", func(t *testing.T) {
		bufs, sizes, valid := newBufs(1, 2000)
		valid[0] = true // stale from an earlier read
		n, err := splitVnet(append(vnetHdr(0, vnetGSONone, 0, 0, 0), udp...), bufs, sizes, valid, Headroom)
		if err != nil || n != 1 || valid[0] || !bytes.Equal(bufs[0][Headroom:Headroom+sizes[0]], udp) {
			t.Fatalf("= %d, %v, valid %v: want the packet untouched and not valid", n, err, valid[0])
		}
	})
}

// TestSplitVnetTooManySegments: more segments than buffers gives the ones
// that fit and wireguard-go's ErrTooManySegments as the stack's non-fatal
// ErrPacketsLost.
func TestSplitVnetTooManySegments(t *testing.T) {
	pkt, ipLen, _ := ipPacket(false, true, make([]byte, 3000), 0x10)
	bufs, sizes, valid := newBufs(2, 2000)
	n, err := splitVnet(append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 1000, ipLen, 16), pkt...), bufs, sizes, valid, Headroom)
	if n != 2 || !errors.Is(err, stack.ErrPacketsLost) || !errors.Is(err, wgtun.ErrTooManySegments) {
		t.Fatalf("= %d, %v; want 2 and ErrPacketsLost", n, err)
	}
	for i := range n {
		transportValid(t, bufs[i][Headroom:Headroom+sizes[i]], ipLen)
	}
	if err := wrapReadErr(wgtun.ErrTooManySegments); !errors.Is(err, stack.ErrPacketsLost) {
		t.Errorf("wireguard-go's own read error %v is not ErrPacketsLost", err)
	}
}

func TestSplitVnetMalformed(t *testing.T) {
	pkt, ipLen, _ := ipPacket(false, true, make([]byte, 3000), 0x10)
	bufs, sizes, valid := newBufs(8, 2000)
	for name, in := range map[string][]byte{
		"short header":           {1, 2, 3},
		"GSO without size":       append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 0, ipLen, 16), pkt...),
		"GSO type v6 on v4":      append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv6, 1000, ipLen, 16), pkt...),
		"csum start inside IP":   append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 1000, 4, 16), pkt...),
		"checksum beyond packet": append(vnetHdr(vnetFlagNeedsCsum, vnetGSONone, 0, 3000, 16), pkt[:100]...),
		"packet beyond buffer":   append(vnetHdr(0, vnetGSONone, 0, 0, 0), make([]byte, 2001)...),
	} {
		if n, err := splitVnet(in, bufs, sizes, valid, Headroom); err == nil || n != 0 {
			t.Errorf("%s: = %d, %v; want an error", name, n, err)
		}
	}
}

// BenchmarkSplitVnet is the read path's work for one 64 KB TCP segment from
// a local app: split at MSS 1448 with every segment's checksums computed
// (what wireguard-go's Read did before, too).
// Run: go test -run '^$' -bench SplitVnet ./tun/
func BenchmarkSplitVnet(b *testing.B) {
	pkt, ipLen, _ := ipPacket(false, true, make([]byte, 65000-52), 0x10)
	in := append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 1448, ipLen, 16), pkt...)
	bufs, sizes, valid := newBufs(128, 2000)
	b.SetBytes(int64(len(pkt)))
	for range b.N {
		if _, err := splitVnet(in, bufs, sizes, valid, Headroom); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWholeTCP: a TSO segment is handed on whole, its payload and TCP
// checksum field (the kernel's partial sum) untouched, its IP length set
// to the whole packet (and the IPv4 header sum redone); a UDP GSO packet
// and a plain packet are left to splitVnet; a TSO header that does not
// match its packet is an error.
func TestWholeTCP(t *testing.T) {
	payload := make([]byte, 30000)
	for i := range payload {
		payload[i] = byte(i * 11)
	}
	for _, tc := range []struct {
		name string
		v6   bool
		typ  uint8
	}{
		{"TCPv4", false, vnetGSOTCPv4},
		{"TCPv6", true, vnetGSOTCPv6},
		{"TCPv4-ECN", false, vnetGSOTCPv4 | vnetGSOECN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, ipLen, _ := ipPacket(tc.v6, true, payload, 0x10)
			want := append([]byte(nil), pkt...)
			// The length fields need not be right in what the kernel
			// hands over; the device sets them.
			if tc.v6 {
				binary.BigEndian.PutUint16(pkt[4:], 0)
			} else {
				binary.BigEndian.PutUint16(pkt[2:], 0)
				binary.BigEndian.PutUint16(pkt[10:], 0)
			}
			in := append(vnetHdr(vnetFlagNeedsCsum, tc.typ, 1400, ipLen, 16), pkt...)
			start, end, ok, err := wholeTCP(in)
			if err != nil || !ok || start != VnetHdrLen || end != len(in) {
				t.Fatalf("wholeTCP = %d, %d, %v, %v; want %d, %d, true, nil", start, end, ok, err, VnetHdrLen, len(in))
			}
			if got := in[start:end]; !bytes.Equal(got, want) {
				t.Errorf("packet differs from the original with right lengths: % x", got[:60])
			}
		})
	}
	udp, ipLen, _ := ipPacket(false, false, payload[:5000], 0)
	if _, _, ok, err := wholeTCP(append(vnetHdr(vnetFlagNeedsCsum, vnetGSOUDPL4, 1400, ipLen, 6), udp...)); ok || err != nil {
		t.Errorf("UDP GSO packet: ok %v, err %v; want it left to splitVnet", ok, err)
	}
	plain, ipLen, _ := ipPacket(false, true, payload[:1000], 0x10)
	if _, _, ok, err := wholeTCP(append(vnetHdr(vnetFlagNeedsCsum, vnetGSONone, 0, ipLen, 16), plain...)); ok || err != nil {
		t.Errorf("plain packet: ok %v, err %v; want it left to splitVnet", ok, err)
	}
	v6, _, _ := ipPacket(true, true, payload[:5000], 0x10)
	if _, _, _, err := wholeTCP(append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 1400, 20, 16), v6...)); err == nil {
		t.Error("TCPv4 GSO type on an IPv6 packet: no error")
	}
	short, _, _ := ipPacket(false, true, payload[:5000], 0x10)
	if _, _, _, err := wholeTCP(append(vnetHdr(vnetFlagNeedsCsum, vnetGSOTCPv4, 1400, 20, 16), short[:45]...)); err == nil {
		t.Error("TSO packet cut inside its TCP header: no error")
	}
}

// TestTruncated: a packet whose IP length says more than was read is
// recognised, for IPv4 and IPv6.
func TestTruncated(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		pkt, _, _ := ipPacket(v6, true, make([]byte, 3000), 0x10)
		if truncated(pkt) {
			t.Errorf("v6=%v: a whole packet reported truncated", v6)
		}
		if !truncated(pkt[:len(pkt)-1]) {
			t.Errorf("v6=%v: a packet one byte short not reported truncated", v6)
		}
	}
}
