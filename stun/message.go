// Package stun is the part of STUN (RFC 8489, formerly RFC 5389) that NAT
// behaviour discovery needs (RFC 5780): the message codec, a Binding
// responder on two addresses and two ports that honours CHANGE-REQUEST and
// reports OTHER-ADDRESS and RESPONSE-ORIGIN, and a client that runs the
// RFC 5780 mapping and filtering tests over any net.PacketConn, such as a
// SOCKS5 UDP association.
//
// No authentication (MESSAGE-INTEGRITY), no TCP or TLS transport and no
// TURN: a discovery client and a lab responder do not use them.
package stun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
)

// MagicCookie is the fixed value of every STUN message's second word.
const MagicCookie uint32 = 0x2112A442

// HeaderLen is the size of the message header.
const HeaderLen = 20

// MaxMessageLen bounds a message this package builds or accepts (a UDP
// datagram that fits in any path without fragmentation is far smaller).
const MaxMessageLen = 4096

// Type is a message type: a method and a class.
type Type uint16

// Methods and classes (RFC 8489 section 5). Binding is the only method.
const (
	MethodBinding uint16 = 0x001

	ClassRequest         uint16 = 0x00
	ClassIndication      uint16 = 0x01
	ClassSuccessResponse uint16 = 0x02
	ClassErrorResponse   uint16 = 0x03
)

// NewType combines a 12-bit method and a 2-bit class into a message type;
// the class bits sit at bit 4 and bit 8.
func NewType(method, class uint16) Type {
	m := method & 0xfff
	return Type((m & 0x000f) | (m&0x0070)<<1 | (m&0x0f80)<<2 | (class&1)<<4 | (class&2)<<7)
}

// Method returns the type's method.
func (t Type) Method() uint16 {
	v := uint16(t)
	return (v & 0x000f) | (v&0x00e0)>>1 | (v&0x3e00)>>2
}

// Class returns the type's class.
func (t Type) Class() uint16 {
	v := uint16(t)
	return (v>>4)&1 | (v>>7)&2
}

// The Binding message types.
var (
	BindingRequest  = NewType(MethodBinding, ClassRequest)
	BindingSuccess  = NewType(MethodBinding, ClassSuccessResponse)
	BindingError    = NewType(MethodBinding, ClassErrorResponse)
	BindingIndicate = NewType(MethodBinding, ClassIndication)
)

func (t Type) String() string {
	name := fmt.Sprintf("method 0x%03x", t.Method())
	if t.Method() == MethodBinding {
		name = "Binding"
	}
	switch t.Class() {
	case ClassRequest:
		return name + " request"
	case ClassIndication:
		return name + " indication"
	case ClassSuccessResponse:
		return name + " success response"
	}
	return name + " error response"
}

// Attribute types used here (RFC 8489 section 18.3, RFC 5780 section 7).
const (
	AttrMappedAddress     uint16 = 0x0001
	AttrChangeRequest     uint16 = 0x0003
	AttrErrorCode         uint16 = 0x0009
	AttrUnknownAttributes uint16 = 0x000A
	AttrXORMappedAddress  uint16 = 0x0020
	AttrSoftware          uint16 = 0x8022
	AttrFingerprint       uint16 = 0x8028
	AttrResponseOrigin    uint16 = 0x802B
	AttrOtherAddress      uint16 = 0x802C
)

// CHANGE-REQUEST flags.
const (
	ChangeIP   uint32 = 0x04
	ChangePort uint32 = 0x02
)

// Attribute is one TLV of a message, its value without padding.
type Attribute struct {
	Type  uint16
	Value []byte
}

// Message is a decoded STUN message.
type Message struct {
	Type          Type
	TransactionID [12]byte
	Attributes    []Attribute
}

// Get returns the value of the first attribute of type t.
func (m *Message) Get(t uint16) ([]byte, bool) {
	for _, a := range m.Attributes {
		if a.Type == t {
			return a.Value, true
		}
	}
	return nil, false
}

// Add appends an attribute.
func (m *Message) Add(t uint16, v []byte) { m.Attributes = append(m.Attributes, Attribute{t, v}) }

// Errors of Parse.
var (
	ErrNotSTUN     = errors.New("stun: not a STUN message")
	ErrTruncated   = errors.New("stun: message truncated")
	ErrFingerprint = errors.New("stun: FINGERPRINT does not match")
)

// IsMessage reports whether b looks like a STUN message: the first two bits
// are zero and the magic cookie is in place (RFC 8489 section 6).
func IsMessage(b []byte) bool {
	return len(b) >= HeaderLen && b[0]&0xc0 == 0 && binary.BigEndian.Uint32(b[4:8]) == MagicCookie
}

// Parse decodes one message that fills b exactly. A FINGERPRINT attribute,
// when present, must be the last one and must match.
func Parse(b []byte) (*Message, error) {
	if !IsMessage(b) {
		return nil, ErrNotSTUN
	}
	if len(b) > MaxMessageLen {
		return nil, fmt.Errorf("stun: message of %d bytes, at most %d accepted", len(b), MaxMessageLen)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 {
		return nil, fmt.Errorf("stun: length %d is not a multiple of 4: %w", n, ErrNotSTUN)
	}
	if HeaderLen+n != len(b) {
		return nil, fmt.Errorf("stun: header says %d bytes of attributes, datagram has %d: %w", n, len(b)-HeaderLen, ErrTruncated)
	}
	m := &Message{Type: Type(binary.BigEndian.Uint16(b[0:2]))}
	copy(m.TransactionID[:], b[8:20])
	for off := HeaderLen; off < len(b); {
		if len(b)-off < 4 {
			return nil, ErrTruncated
		}
		t := binary.BigEndian.Uint16(b[off:])
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		end := off + 4 + l
		if end > len(b) {
			return nil, fmt.Errorf("stun: attribute 0x%04x of %d bytes overruns the message: %w", t, l, ErrTruncated)
		}
		if t == AttrFingerprint {
			if l != 4 || pad4(end) != len(b) {
				return nil, errors.New("stun: FINGERPRINT is not the last 4-byte attribute")
			}
			if fingerprint(b[:off]) != binary.BigEndian.Uint32(b[off+4:]) {
				return nil, ErrFingerprint
			}
		}
		m.Attributes = append(m.Attributes, Attribute{Type: t, Value: b[off+4 : end : end]})
		off = pad4(end)
		if off > len(b) {
			return nil, ErrTruncated
		}
	}
	return m, nil
}

func pad4(n int) int { return (n + 3) &^ 3 }

// fingerprint is the FINGERPRINT value of a message whose header and
// attributes before FINGERPRINT are b (whose length field already counts
// the FINGERPRINT attribute).
func fingerprint(b []byte) uint32 { return crc32.ChecksumIEEE(b) ^ 0x5354554e }

// Append encodes m after b, with a FINGERPRINT when fp is set (any
// FINGERPRINT among m's attributes is recomputed, not copied).
func (m *Message) Append(b []byte, fp bool) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, uint16(m.Type)&0x3fff)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint32(b, MagicCookie)
	b = append(b, m.TransactionID[:]...)
	for _, a := range m.Attributes {
		if a.Type == AttrFingerprint {
			continue
		}
		if len(a.Value) > 0xffff {
			return nil, fmt.Errorf("stun: attribute 0x%04x of %d bytes is too long", a.Type, len(a.Value))
		}
		b = binary.BigEndian.AppendUint16(b, a.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(a.Value)))
		b = append(b, a.Value...)
		for len(b)%4 != start%4 {
			b = append(b, 0)
		}
	}
	if fp {
		binary.BigEndian.PutUint16(b[start+2:], uint16(len(b)-start-HeaderLen+8))
		crc := fingerprint(b[start:])
		b = binary.BigEndian.AppendUint16(b, AttrFingerprint)
		b = binary.BigEndian.AppendUint16(b, 4)
		b = binary.BigEndian.AppendUint32(b, crc)
	}
	n := len(b) - start - HeaderLen
	if n+HeaderLen > MaxMessageLen {
		return nil, fmt.Errorf("stun: message of %d bytes, at most %d", n+HeaderLen, MaxMessageLen)
	}
	binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	return b, nil
}

// Address families of the address attributes.
const (
	familyIPv4 = 0x01
	familyIPv6 = 0x02
)

// AppendAddress encodes ap in the MAPPED-ADDRESS format (also that of
// OTHER-ADDRESS and RESPONSE-ORIGIN).
func AppendAddress(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	if a.Is4() {
		b = append(b, 0, familyIPv4)
		b = binary.BigEndian.AppendUint16(b, ap.Port())
		v := a.As4()
		return append(b, v[:]...)
	}
	b = append(b, 0, familyIPv6)
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	v := a.As16()
	return append(b, v[:]...)
}

// ParseAddress decodes a MAPPED-ADDRESS-format value.
func ParseAddress(v []byte) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, ErrTruncated
	}
	port := binary.BigEndian.Uint16(v[2:4])
	switch v[1] {
	case familyIPv4:
		if len(v) != 8 {
			return netip.AddrPort{}, fmt.Errorf("stun: IPv4 address attribute of %d bytes, want 8", len(v))
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(v[4:8])), port), nil
	case familyIPv6:
		if len(v) != 20 {
			return netip.AddrPort{}, fmt.Errorf("stun: IPv6 address attribute of %d bytes, want 20", len(v))
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(v[4:20])), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("stun: address family 0x%02x, want 0x01 or 0x02", v[1])
}

// xorKey is what XOR-MAPPED-ADDRESS XORs an address with: the magic cookie
// and, for IPv6, the transaction ID.
func xorKey(txid [12]byte) [16]byte {
	var k [16]byte
	binary.BigEndian.PutUint32(k[:4], MagicCookie)
	copy(k[4:], txid[:])
	return k
}

// AppendXORAddress encodes ap as an XOR-MAPPED-ADDRESS value for a
// message with transaction ID txid.
func AppendXORAddress(b []byte, ap netip.AddrPort, txid [12]byte) []byte {
	start := len(b)
	b = AppendAddress(b, ap)
	xorValue(b[start:], txid)
	return b
}

// ParseXORAddress decodes an XOR-MAPPED-ADDRESS value.
func ParseXORAddress(v []byte, txid [12]byte) (netip.AddrPort, error) {
	c := append([]byte(nil), v...)
	if len(c) >= 4 {
		xorValue(c, txid)
	}
	return ParseAddress(c)
}

func xorValue(v []byte, txid [12]byte) {
	k := xorKey(txid)
	v[2] ^= k[0]
	v[3] ^= k[1]
	for i := 4; i < len(v) && i-4 < len(k); i++ {
		v[i] ^= k[i-4]
	}
}

// ErrorCode is a decoded ERROR-CODE attribute.
type ErrorCode struct {
	Code   int // 300 to 699
	Reason string
}

func (e *ErrorCode) Error() string { return fmt.Sprintf("stun: error %d %s", e.Code, e.Reason) }

// AppendErrorCode encodes an ERROR-CODE value.
func AppendErrorCode(b []byte, code int, reason string) []byte {
	b = append(b, 0, 0, byte(code/100), byte(code%100))
	return append(b, reason...)
}

// ParseErrorCode decodes an ERROR-CODE value.
func ParseErrorCode(v []byte) (*ErrorCode, error) {
	if len(v) < 4 {
		return nil, ErrTruncated
	}
	class, num := int(v[2]&7), int(v[3])
	if class < 3 || class > 6 || num > 99 {
		return nil, fmt.Errorf("stun: ERROR-CODE class %d number %d out of range", class, num)
	}
	return &ErrorCode{Code: class*100 + num, Reason: string(v[4:])}, nil
}

// ComprehensionRequired reports whether an attribute type must be
// understood by the receiver (0x0000-0x7FFF).
func ComprehensionRequired(t uint16) bool { return t < 0x8000 }
