package socks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// SOCKS4 reply codes (the CD field of a reply).
const (
	Reply4Granted       byte = 0x5A
	Reply4Rejected      byte = 0x5B // rejected or failed
	Reply4NoIdentd      byte = 0x5C // identd unreachable
	Reply4IdentMismatch byte = 0x5D // identd reported a different user
)

// MaxUserIDLen bounds the SOCKS4 USERID field. The protocol has no limit;
// 255 is what every implementation accepts.
const MaxUserIDLen = 255

// Request4 is a SOCKS4 or SOCKS4a request. Addr.Name is set for SOCKS4a (the
// DSTIP was 0.0.0.x with x != 0 and a domain followed the USERID).
type Request4 struct {
	Command Command
	Addr    Addr
	UserID  string
}

// ReadRequest4 reads a SOCKS4/4a request (VN CD DSTPORT DSTIP USERID NUL
// [DOMAIN NUL]). Each NUL-terminated field is bounded to 255 bytes; a longer
// one is an error, not an allocation.
func ReadRequest4(r io.Reader) (Request4, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request4{}, eofIsUnexpected(err)
	}
	if hdr[0] != Version4 {
		return Request4{}, fmt.Errorf("socks: request version 0x%02x: %w", hdr[0], ErrVersion)
	}
	req := Request4{Command: Command(hdr[1])}
	port := binary.BigEndian.Uint16(hdr[2:4])
	ip := netip.AddrFrom4([4]byte(hdr[4:8]))
	user, err := readCString(r, MaxUserIDLen, "USERID")
	if err != nil {
		return req, err
	}
	req.UserID = user
	if hdr[4] == 0 && hdr[5] == 0 && hdr[6] == 0 && hdr[7] != 0 {
		host, err := readCString(r, MaxDomainLen, "SOCKS4a domain")
		if err != nil {
			return req, err
		}
		if host == "" {
			return req, errors.New("socks: SOCKS4a request with an empty domain")
		}
		req.Addr = Addr{Name: host, Port: port}
	} else {
		req.Addr = Addr{IP: ip, Port: port}
	}
	switch req.Command {
	case CmdConnect, CmdBind:
	default:
		return req, fmt.Errorf("socks: SOCKS4 %v: %w", req.Command, ErrCommand)
	}
	return req, nil
}

// readCString reads bytes up to a NUL, at most max of them. It reads one byte
// at a time so nothing past the NUL is consumed.
func readCString(r io.Reader, max int, what string) (string, error) {
	var buf [256]byte
	for n := 0; ; n++ {
		if _, err := io.ReadFull(r, buf[n:n+1]); err != nil {
			return "", eofIsUnexpected(err)
		}
		if buf[n] == 0 {
			return string(buf[:n]), nil
		}
		if n >= max {
			return "", fmt.Errorf("socks: %s longer than %d bytes", what, max)
		}
	}
}

// AppendRequest4 appends a SOCKS4 request, or a SOCKS4a request when
// req.Addr is a domain. SOCKS4 carries only IPv4 destinations.
func AppendRequest4(b []byte, req Request4) ([]byte, error) {
	if len(req.UserID) > MaxUserIDLen {
		return b, fmt.Errorf("socks: SOCKS4 USERID longer than %d bytes", MaxUserIDLen)
	}
	for i := 0; i < len(req.UserID); i++ {
		if req.UserID[i] == 0 {
			return b, errors.New("socks: SOCKS4 USERID contains a NUL byte")
		}
	}
	b = append(b, Version4, byte(req.Command))
	b = binary.BigEndian.AppendUint16(b, req.Addr.Port)
	switch {
	case req.Addr.Name != "":
		if len(req.Addr.Name) > MaxDomainLen {
			return b, errDomainTooLong
		}
		b = append(b, 0, 0, 0, 1)
		b = append(b, req.UserID...)
		b = append(b, 0)
		b = append(b, req.Addr.Name...)
		return append(b, 0), nil
	case req.Addr.IP.Is4() || req.Addr.IP.Is4In6():
		ip := req.Addr.IP.Unmap().As4()
		b = append(b, ip[:]...)
		b = append(b, req.UserID...)
		return append(b, 0), nil
	case req.Addr.IP.Is6():
		return b, fmt.Errorf("socks: SOCKS4 cannot carry IPv6 destination %s: %w", req.Addr, ErrAddressType)
	default:
		return b, errEmptyAddr
	}
}

// ReadReply4 reads a SOCKS4 reply (VN=0 CD DSTPORT DSTIP).
func ReadReply4(r io.Reader) (code byte, bound netip.AddrPort, err error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, netip.AddrPort{}, eofIsUnexpected(err)
	}
	if b[0] != 0 {
		return 0, netip.AddrPort{}, fmt.Errorf("socks: SOCKS4 reply version 0x%02x (want 0x00): %w", b[0], ErrVersion)
	}
	return b[1], netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), nil
}

// AppendReply4 appends a SOCKS4 reply. A bound address that is not IPv4 is
// sent as 0.0.0.0.
func AppendReply4(b []byte, code byte, bound netip.AddrPort) []byte {
	b = append(b, 0, code)
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	ip := [4]byte{}
	if a := bound.Addr().Unmap(); a.Is4() {
		ip = a.As4()
	}
	return append(b, ip[:]...)
}
