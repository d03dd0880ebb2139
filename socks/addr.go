package socks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Address types (ATYP) of RFC 1928 section 5.
const (
	AtypIPv4   byte = 0x01
	AtypDomain byte = 0x03
	AtypIPv6   byte = 0x04
)

// MaxDomainLen is the longest domain a SOCKS5 address or SOCKS4a request carries.
const MaxDomainLen = 255

// Addr is a SOCKS destination: an IP address or a domain name, and a port.
// Exactly one of IP and Name is set in a valid Addr. It is a net.Addr (an
// Addr value or pointer), so a name can travel where a net.Addr does: as
// the destination of a UDP datagram sent through a SOCKS association, as
// the sender of one received, in a *net.OpError.
type Addr struct {
	IP   netip.Addr
	Name string
	Port uint16
}

// AddrFromAddrPort returns the Addr of an IP address and port. An
// IPv4-mapped IPv6 address is unmapped so it travels as ATYP IPv4.
func AddrFromAddrPort(ap netip.AddrPort) Addr {
	return Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}
}

// ParseAddr parses "host:port", where host is an IPv4 address, a bracketed or
// bare IPv6 address, or a domain name of at most 255 bytes.
func ParseAddr(s string) (Addr, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("socks: address %q: %w", s, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("socks: address %q: port must be a number from 0 to 65535", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Addr{}, fmt.Errorf("socks: address %q: zoned IPv6 addresses cannot be sent over SOCKS", s)
		}
		return Addr{IP: ip.Unmap(), Port: uint16(port)}, nil
	}
	if host == "" {
		return Addr{}, fmt.Errorf("socks: address %q: empty host", s)
	}
	if len(host) > MaxDomainLen {
		return Addr{}, fmt.Errorf("socks: address %q: domain is %d bytes, at most %d fit", s[:32]+"...", len(host), MaxDomainLen)
	}
	return Addr{Name: host, Port: uint16(port)}, nil
}

// Host returns the address's host part: the domain, or the IP in text form.
func (a Addr) Host() string {
	if a.Name != "" {
		return a.Name
	}
	if !a.IP.IsValid() {
		return ""
	}
	return a.IP.String()
}

// Network returns "socks": the address says where, not over what network.
func (a Addr) Network() string { return "socks" }

// String returns "host:port", with brackets around an IPv6 address.
func (a Addr) String() string {
	return net.JoinHostPort(a.Host(), strconv.Itoa(int(a.Port)))
}

// AddrPort returns the address as a netip.AddrPort; ok is false for a domain.
func (a Addr) AddrPort() (ap netip.AddrPort, ok bool) {
	if a.Name != "" || !a.IP.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.IP, a.Port), true
}

// Atyp returns the SOCKS5 address type that carries a.
func (a Addr) Atyp() byte {
	switch {
	case a.Name != "":
		return AtypDomain
	case a.IP.Is4() || a.IP.Is4In6():
		return AtypIPv4
	default:
		return AtypIPv6
	}
}

// ErrAddressType is wrapped by decoders that meet an unknown ATYP. A server
// answers it with reply 0x08.
var ErrAddressType = errors.New("address type not supported")

// errors for encoders
var (
	errDomainTooLong = fmt.Errorf("socks: domain longer than %d bytes", MaxDomainLen)
	errEmptyAddr     = errors.New("socks: address has neither IP nor domain")
)

// AppendAddr appends the SOCKS5 encoding of a (ATYP, address, port).
func AppendAddr(b []byte, a Addr) ([]byte, error) {
	switch {
	case a.Name != "":
		if len(a.Name) > MaxDomainLen {
			return b, errDomainTooLong
		}
		b = append(b, AtypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4() || a.IP.Is4In6():
		ip := a.IP.Unmap().As4()
		b = append(b, AtypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, AtypIPv6)
		b = append(b, ip[:]...)
	default:
		return b, errEmptyAddr
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// ReadAddr reads a SOCKS5 address (ATYP, address, port) from r. An unknown
// ATYP gives an error wrapping ErrAddressType; nothing after the ATYP byte is
// read in that case.
func ReadAddr(r io.Reader) (Addr, error) {
	var buf [1 + 255 + 2]byte
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return Addr{}, eofIsUnexpected(err)
	}
	var n int
	switch buf[0] {
	case AtypIPv4:
		n = 4
	case AtypIPv6:
		n = 16
	case AtypDomain:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return Addr{}, eofIsUnexpected(err)
		}
		n = int(buf[0])
		if n == 0 {
			return Addr{}, errors.New("socks: empty domain name")
		}
		if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
			return Addr{}, eofIsUnexpected(err)
		}
		return Addr{Name: string(buf[:n]), Port: binary.BigEndian.Uint16(buf[n:])}, nil
	default:
		return Addr{}, fmt.Errorf("socks: ATYP 0x%02x: %w", buf[0], ErrAddressType)
	}
	atyp := buf[0]
	if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
		return Addr{}, eofIsUnexpected(err)
	}
	return decodeIP(atyp, buf[:n+2]), nil
}

func decodeIP(atyp byte, b []byte) Addr {
	if atyp == AtypIPv4 {
		return Addr{IP: netip.AddrFrom4([4]byte(b[:4])), Port: binary.BigEndian.Uint16(b[4:])}
	}
	return Addr{IP: netip.AddrFrom16([16]byte(b[:16])).Unmap(), Port: binary.BigEndian.Uint16(b[16:])}
}

// DecodeAddr decodes a SOCKS5 address at the start of b and returns it with
// the number of bytes it took.
func DecodeAddr(b []byte) (Addr, int, error) {
	if len(b) < 1 {
		return Addr{}, 0, errShort
	}
	switch b[0] {
	case AtypIPv4, AtypIPv6:
		n := 4
		if b[0] == AtypIPv6 {
			n = 16
		}
		if len(b) < 1+n+2 {
			return Addr{}, 0, errShort
		}
		return decodeIP(b[0], b[1:]), 1 + n + 2, nil
	case AtypDomain:
		if len(b) < 2 {
			return Addr{}, 0, errShort
		}
		n := int(b[1])
		if n == 0 {
			return Addr{}, 0, errors.New("socks: empty domain name")
		}
		if len(b) < 2+n+2 {
			return Addr{}, 0, errShort
		}
		return Addr{Name: string(b[2 : 2+n]), Port: binary.BigEndian.Uint16(b[2+n:])}, 2 + n + 2, nil
	default:
		return Addr{}, 0, fmt.Errorf("socks: ATYP 0x%02x: %w", b[0], ErrAddressType)
	}
}

var errShort = fmt.Errorf("socks: message truncated: %w", io.ErrUnexpectedEOF)

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
