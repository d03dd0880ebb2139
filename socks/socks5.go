package socks

import (
	"errors"
	"fmt"
	"io"
)

// Protocol versions.
const (
	Version4 byte = 0x04
	Version5 byte = 0x05
)

// Command is a SOCKS command code (the same values in SOCKS4 and SOCKS5).
type Command byte

// Commands.
const (
	CmdConnect      Command = 0x01
	CmdBind         Command = 0x02
	CmdUDPAssociate Command = 0x03 // SOCKS5 only
)

func (c Command) String() string {
	switch c {
	case CmdConnect:
		return "CONNECT"
	case CmdBind:
		return "BIND"
	case CmdUDPAssociate:
		return "UDP-ASSOCIATE"
	}
	return fmt.Sprintf("command(0x%02x)", byte(c))
}

// Method is a SOCKS5 authentication method.
type Method byte

// Methods of RFC 1928 section 3.
const (
	MethodNoAuth       Method = 0x00
	MethodGSSAPI       Method = 0x01
	MethodUserPass     Method = 0x02
	MethodNoAcceptable Method = 0xFF
)

// ErrVersion is wrapped by decoders that meet a version byte they do not speak.
var ErrVersion = errors.New("unsupported SOCKS version")

// ErrCommand is wrapped by ReadRequest for an unknown command. The request's
// address has still been read, so a server can answer with reply 0x07.
var ErrCommand = errors.New("command not supported")

// ReadGreeting reads a SOCKS5 method-selection message (VER NMETHODS METHODS)
// and returns the offered methods.
func ReadGreeting(r io.Reader) ([]Method, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, eofIsUnexpected(err)
	}
	if hdr[0] != Version5 {
		return nil, fmt.Errorf("socks: greeting version 0x%02x: %w", hdr[0], ErrVersion)
	}
	if hdr[1] == 0 {
		return nil, errors.New("socks: greeting offers no methods")
	}
	buf := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, eofIsUnexpected(err)
	}
	methods := make([]Method, len(buf))
	for i, m := range buf {
		methods[i] = Method(m)
	}
	return methods, nil
}

// AppendGreeting appends a SOCKS5 method-selection message.
func AppendGreeting(b []byte, methods ...Method) ([]byte, error) {
	if len(methods) == 0 || len(methods) > 255 {
		return b, fmt.Errorf("socks: a greeting offers 1 to 255 methods, not %d", len(methods))
	}
	b = append(b, Version5, byte(len(methods)))
	for _, m := range methods {
		b = append(b, byte(m))
	}
	return b, nil
}

// ReadMethodSelection reads the server's METHOD selection (VER METHOD).
func ReadMethodSelection(r io.Reader) (Method, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, eofIsUnexpected(err)
	}
	if b[0] != Version5 {
		return 0, fmt.Errorf("socks: method selection version 0x%02x: %w", b[0], ErrVersion)
	}
	return Method(b[1]), nil
}

// Request is a SOCKS5 request (RFC 1928 section 4).
type Request struct {
	Command Command
	Addr    Addr
}

// ReadRequest reads a SOCKS5 request. For an unknown command the address is
// still read and the error wraps ErrCommand; for an unknown ATYP the error
// wraps ErrAddressType.
func ReadRequest(r io.Reader) (Request, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, eofIsUnexpected(err)
	}
	if hdr[0] != Version5 {
		return Request{}, fmt.Errorf("socks: request version 0x%02x: %w", hdr[0], ErrVersion)
	}
	req := Request{Command: Command(hdr[1])}
	addr, err := ReadAddr(r)
	if err != nil {
		return req, err
	}
	req.Addr = addr
	switch req.Command {
	case CmdConnect, CmdBind, CmdUDPAssociate:
	default:
		return req, fmt.Errorf("socks: %v: %w", req.Command, ErrCommand)
	}
	// RSV (hdr[2]) must be 0 per the RFC; it is ignored, as every deployed
	// server does, so a sloppy client is not refused for a reserved byte.
	return req, nil
}

// AppendRequest appends the encoding of a SOCKS5 request.
func AppendRequest(b []byte, req Request) ([]byte, error) {
	b = append(b, Version5, byte(req.Command), 0)
	return AppendAddr(b, req.Addr)
}

// ReadReply reads a SOCKS5 reply (VER REP RSV ATYP BND.ADDR BND.PORT).
func ReadReply(r io.Reader) (Reply, Addr, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, Addr{}, eofIsUnexpected(err)
	}
	if hdr[0] != Version5 {
		return 0, Addr{}, fmt.Errorf("socks: reply version 0x%02x: %w", hdr[0], ErrVersion)
	}
	addr, err := ReadAddr(r)
	return Reply(hdr[1]), addr, err
}

// AppendReply appends a SOCKS5 reply. An empty bound address is sent as
// 0.0.0.0:0.
func AppendReply(b []byte, rep Reply, bound Addr) ([]byte, error) {
	b = append(b, Version5, byte(rep), 0)
	if bound.Name == "" && !bound.IP.IsValid() {
		return append(b, AtypIPv4, 0, 0, 0, 0, 0, 0), nil
	}
	return AppendAddr(b, bound)
}

// Username/password sub-negotiation, RFC 1929.
const (
	UserPassVersion byte = 0x01
	UserPassSuccess byte = 0x00
	UserPassFailure byte = 0x01
)

// ReadUserPass reads an RFC 1929 request (VER ULEN UNAME PLEN PASSWD).
func ReadUserPass(r io.Reader) (user, pass string, err error) {
	var b [1 + 1 + 255 + 1 + 255]byte
	if _, err := io.ReadFull(r, b[:2]); err != nil {
		return "", "", eofIsUnexpected(err)
	}
	if b[0] != UserPassVersion {
		return "", "", fmt.Errorf("socks: username/password version 0x%02x: %w", b[0], ErrVersion)
	}
	ulen := int(b[1])
	if _, err := io.ReadFull(r, b[:ulen+1]); err != nil {
		return "", "", eofIsUnexpected(err)
	}
	user = string(b[:ulen])
	plen := int(b[ulen])
	if _, err := io.ReadFull(r, b[:plen]); err != nil {
		return "", "", eofIsUnexpected(err)
	}
	return user, string(b[:plen]), nil
}

// AppendUserPass appends an RFC 1929 request. Both fields take 1 to 255 bytes.
func AppendUserPass(b []byte, user, pass string) ([]byte, error) {
	if len(user) == 0 || len(user) > 255 || len(pass) == 0 || len(pass) > 255 {
		return b, errors.New("socks: username and password must each be 1 to 255 bytes (RFC 1929)")
	}
	b = append(b, UserPassVersion, byte(len(user)))
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...), nil
}

// ReadUserPassStatus reads the server's RFC 1929 answer (VER STATUS) and
// reports whether it is success.
func ReadUserPassStatus(r io.Reader) (ok bool, err error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return false, eofIsUnexpected(err)
	}
	if b[0] != UserPassVersion {
		return false, fmt.Errorf("socks: username/password status version 0x%02x: %w", b[0], ErrVersion)
	}
	return b[1] == UserPassSuccess, nil
}
