package stun

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func hexb(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

// RFC 5769 section 2.2: sample IPv4 response.
var rfc5769Response = hexb(`0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
	8022000b 74657374 20766563 746f7220
	00200008 0001a147 e112a643
	00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
	80280004 c07d4c96`)

func TestParseRFC5769(t *testing.T) {
	m, err := Parse(rfc5769Response)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != BindingSuccess {
		t.Fatalf("type %v, want %v", m.Type, BindingSuccess)
	}
	v, ok := m.Get(AttrXORMappedAddress)
	if !ok {
		t.Fatal("no XOR-MAPPED-ADDRESS")
	}
	ap, err := ParseXORAddress(v, m.TransactionID)
	if err != nil || ap != netip.MustParseAddrPort("192.0.2.1:32853") {
		t.Fatalf("XOR-MAPPED-ADDRESS = %v, %v; want 192.0.2.1:32853", ap, err)
	}
	if sw, _ := m.Get(AttrSoftware); string(sw) != "test vector" {
		t.Errorf("SOFTWARE = %q", sw)
	}
	bad := bytes.Clone(rfc5769Response)
	bad[len(bad)-1] ^= 1
	if _, err := Parse(bad); !errors.Is(err, ErrFingerprint) {
		t.Errorf("corrupted FINGERPRINT: %v, want ErrFingerprint", err)
	}
}

func TestTypeBits(t *testing.T) {
	for _, c := range []struct {
		t    Type
		want uint16
	}{{BindingRequest, 0x0001}, {BindingSuccess, 0x0101}, {BindingError, 0x0111}, {BindingIndicate, 0x0011}} {
		if uint16(c.t) != c.want {
			t.Errorf("%v = %#04x, want %#04x", c.t, uint16(c.t), c.want)
		}
		if c.t.Method() != MethodBinding {
			t.Errorf("%v: method %#x", c.t, c.t.Method())
		}
	}
	if ty := NewType(0xabc, ClassErrorResponse); ty.Method() != 0xabc || ty.Class() != ClassErrorResponse {
		t.Errorf("NewType(0xabc, error) = %#04x: method %#x class %d", uint16(ty), ty.Method(), ty.Class())
	}
}

func TestRoundTrip(t *testing.T) {
	m := &Message{Type: BindingSuccess, TransactionID: [12]byte{1, 2, 3}}
	v6 := netip.MustParseAddrPort("[2001:db8::1]:4242")
	m.Add(AttrXORMappedAddress, AppendXORAddress(nil, v6, m.TransactionID))
	m.Add(AttrOtherAddress, AppendAddress(nil, netip.MustParseAddrPort("203.0.113.2:3479")))
	m.Add(AttrSoftware, []byte("odd"))
	b, err := m.Append(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4 != 0 {
		t.Fatalf("length %d not padded", len(b))
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := got.Get(AttrXORMappedAddress)
	if ap, err := ParseXORAddress(v, got.TransactionID); err != nil || ap != v6 {
		t.Errorf("XOR v6 = %v, %v", ap, err)
	}
	if v, _ := got.Get(AttrSoftware); string(v) != "odd" {
		t.Errorf("SOFTWARE = %q", v)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(rfc5769Response)
	req := &Message{Type: BindingRequest}
	req.Add(AttrChangeRequest, []byte{0, 0, 0, 6})
	b, _ := req.Append(nil, true)
	f.Add(b)
	f.Add(hexb("0001 0000 2112a442 000000000000000000000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		for _, a := range m.Attributes {
			switch a.Type {
			case AttrXORMappedAddress:
				ParseXORAddress(a.Value, m.TransactionID)
			case AttrMappedAddress, AttrOtherAddress, AttrResponseOrigin:
				ParseAddress(a.Value)
			case AttrErrorCode:
				ParseErrorCode(a.Value)
			}
		}
		enc, err := m.Append(nil, true)
		if err != nil {
			if len(b) > MaxMessageLen-8 {
				return // FINGERPRINT added past the size limit
			}
			t.Fatalf("re-encode: %v", err)
		}
		m2, err := Parse(enc)
		if err != nil {
			t.Fatalf("re-encoded message does not parse: %v\n% x", err, enc)
		}
		if m2.Type != m.Type&0x3fff || m2.TransactionID != m.TransactionID {
			t.Fatalf("header changed: %v/%x -> %v/%x", m.Type, m.TransactionID, m2.Type, m2.TransactionID)
		}
		var want []Attribute
		for _, a := range m.Attributes {
			if a.Type != AttrFingerprint {
				want = append(want, a)
			}
		}
		got := m2.Attributes[:len(m2.Attributes)-1]
		if len(got) != len(want) {
			t.Fatalf("%d attributes became %d", len(want), len(got))
		}
		for i := range got {
			if got[i].Type != want[i].Type || !bytes.Equal(got[i].Value, want[i].Value) {
				t.Fatalf("attribute %d: %x=% x became %x=% x", i, want[i].Type, want[i].Value, got[i].Type, got[i].Value)
			}
		}
	})
}

func TestParseServerAddrs(t *testing.T) {
	p, a, err := ParseServerAddrs("203.0.113.1:3478,203.0.113.2")
	if err != nil || p != netip.MustParseAddrPort("203.0.113.1:3478") || a != netip.MustParseAddrPort("203.0.113.2:3479") {
		t.Errorf("= %v %v %v", p, a, err)
	}
	for _, bad := range []string{"203.0.113.1:3478", "203.0.113.1:3478,203.0.113.1:3479", "203.0.113.1:3478,203.0.113.2:3478",
		"203.0.113.1:3478,[2001:db8::1]:3479", "x:1,y:2", ",", "203.0.113.1:0,203.0.113.2:1"} {
		if _, _, err := ParseServerAddrs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// testServer starts a responder on 127.0.0.1 and 127.0.0.2 (the whole
// 127/8 is loopback on Linux) with two free ports.
func testServer(t *testing.T) *Server {
	t.Helper()
	for try := 0; try < 20; try++ {
		p1, p2 := freeUDPPort(t), freeUDPPort(t)
		if p1 == p2 {
			continue
		}
		s, err := Listen(context.Background(), nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p1),
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p2), nil)
		if err != nil {
			continue // a port was taken in between
		}
		done := make(chan struct{})
		go func() { s.Serve(context.Background()); close(done) }()
		t.Cleanup(func() { s.Close(); <-done })
		return s
	}
	t.Fatal("no two free UDP ports")
	return nil
}

func freeUDPPort(t *testing.T) uint16 {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

func TestServerChangeRequest(t *testing.T) {
	s := testServer(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	local := addrPort(pc.LocalAddr())
	p, a := s.Primary(), s.Alternate()
	for _, c := range []struct {
		change uint32
		from   netip.AddrPort
	}{
		{0, p},
		{ChangePort, netip.AddrPortFrom(p.Addr(), a.Port())},
		{ChangeIP, netip.AddrPortFrom(a.Addr(), p.Port())},
		{ChangeIP | ChangePort, a},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := Request(ctx, pc, net.UDPAddrFromAddrPort(p), c.change)
		cancel()
		if err != nil {
			t.Fatalf("change %#x: %v", c.change, err)
		}
		if r.Mapped != local || r.From != c.from || r.Origin != c.from || r.Other != a {
			t.Errorf("change %#x: mapped %v from %v origin %v other %v; want %v, %v, %v, %v", c.change, r.Mapped, r.From, r.Origin, r.Other, local, c.from, c.from, a)
		}
	}
	// Test II's target: the alternate IP with the primary port names the
	// other mixed socket as OTHER-ADDRESS.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := Request(ctx, pc, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.Addr(), p.Port())), 0)
	if err != nil || r.Other != netip.AddrPortFrom(p.Addr(), a.Port()) {
		t.Errorf("other of (A2,P1) = %v, %v", r, err)
	}
}

func TestServerUnknownAttribute(t *testing.T) {
	s := testServer(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	req := &Message{Type: BindingRequest, TransactionID: [12]byte{9}}
	req.Add(0x0042, []byte{1})
	b, _ := req.Append(nil, false)
	pc.WriteTo(b, net.UDPAddrFromAddrPort(s.Primary()))
	pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(buf[:n])
	if err != nil || m.Type != BindingError {
		t.Fatalf("%v %v, want an error response", m, err)
	}
	v, _ := m.Get(AttrErrorCode)
	ec, err := ParseErrorCode(v)
	if err != nil || ec.Code != 420 {
		t.Errorf("error %v %v, want 420", ec, err)
	}
	if u, _ := m.Get(AttrUnknownAttributes); !bytes.Equal(u, []byte{0, 0x42}) {
		t.Errorf("UNKNOWN-ATTRIBUTES = % x", u)
	}
}

func TestDiscoverNoNAT(t *testing.T) {
	s := testServer(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m, err := DiscoverMapping(context.Background(), pc, s.Primary(), Options{Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if m.Behaviour != EndpointIndependent || m.SourceMismatch != "" || m.Other != s.Alternate() {
		t.Errorf("mapping %+v", m)
	}
	f, err := DiscoverFiltering(context.Background(), pc, s.Primary(), Options{Wait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if f.Behaviour != EndpointIndependent || f.SourceMismatch != "" {
		t.Errorf("filtering %+v", f)
	}
}

func TestRequestTimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err = Request(ctx, pc, silent.LocalAddr(), 0)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	// It retransmitted: the silent peer got more than one copy.
	silent.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n := 0
	buf := make([]byte, 1500)
	for ; n < 10; n++ {
		if _, _, err := silent.ReadFrom(buf); err != nil {
			break
		}
	}
	if n < 2 {
		t.Errorf("%d transmissions, want retransmissions", n)
	}
}
