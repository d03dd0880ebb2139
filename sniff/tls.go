package sniff

import (
	"errors"
	"slices"
)

// TLS wire constants (RFC 8446 sections 4, 4.2, 5.1; RFC 6066 section 3).
const (
	recordTypeHandshake  = 22
	recordHeaderLen      = 5
	maxRecordLen         = 1 << 14 // TLSPlaintext.length
	handshakeClientHello = 1
	extServerName        = 0
	serverNameHostName   = 0
)

// TLSServerName reads the server_name of the TLS ClientHello at the start of
// b, the first bytes of a TCP stream. The ClientHello may be split across
// several records and b may end anywhere: NeedMore says the bytes so far are
// a ClientHello (or its beginning) that does not reach its server_name yet.
// A ClientHello without a server_name (or with an IP literal) is NoName;
// anything that is not a handshake record carrying a ClientHello is NotMatch.
//
// With Encrypted Client Hello the name found is the outer ClientHello's
// public name, the only one visible on the wire.
func TLSServerName(b []byte) (string, Verdict) {
	hs, broken := handshakeFragments(b)
	host, v := clientHelloServerName(hs)
	if v == NeedMore && broken {
		// The ClientHello needs bytes past the point where the records
		// stopped being a handshake.
		return "", NotMatch
	}
	return host, v
}

// handshakeFragments concatenates the fragments of the handshake records at
// the start of b until they hold a whole handshake message or b ends. broken
// reports that the record layer went wrong (another content type, a bad
// header) before that: the bytes returned are all the message will get.
func handshakeFragments(b []byte) (hs []byte, broken bool) {
	copied := false
	for len(b) > 0 {
		if msgLen, ok := handshakeLen(hs); ok && len(hs) >= msgLen {
			return hs, false
		}
		if !recordHeaderOK(b) {
			return hs, true
		}
		if len(b) < recordHeaderLen {
			return hs, false
		}
		n := int(b[3])<<8 | int(b[4])
		frag := b[recordHeaderLen:min(recordHeaderLen+n, len(b))]
		switch {
		case hs == nil:
			hs = frag
		case !copied:
			hs = append(slices.Clip(hs), frag...)
			copied = true
		default:
			hs = append(hs, frag...)
		}
		if len(b) < recordHeaderLen+n {
			return hs, false
		}
		b = b[recordHeaderLen+n:]
	}
	return hs, false
}

// recordHeaderOK reports whether the (possibly partial) record header at the
// start of b is one of a handshake record: type 22, legacy_record_version
// 3.x, a length of 1..2^14.
func recordHeaderOK(b []byte) bool {
	if b[0] != recordTypeHandshake {
		return false
	}
	if len(b) > 1 && b[1] != 3 {
		return false
	}
	if len(b) > 2 && b[2] > 4 {
		return false
	}
	if len(b) >= recordHeaderLen {
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxRecordLen {
			return false
		}
	}
	return true
}

// handshakeLen returns the length of the handshake message at the start of
// hs, header included, once its header is there.
func handshakeLen(hs []byte) (int, bool) {
	if len(hs) < 4 {
		return 0, false
	}
	return 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])), true
}

// clientHelloServerName reads the server_name of the ClientHello handshake
// message at the start of hs, which may stop short of the message's end.
// Shared by the TLS record layer and QUIC's CRYPTO stream.
func clientHelloServerName(hs []byte) (string, Verdict) {
	host, err := parseClientHello(hs)
	switch {
	case err == nil && host != "":
		return host, Found
	case err == nil:
		return "", NoName
	case errors.Is(err, errShort):
		return "", NeedMore
	}
	return "", NotMatch
}

var (
	errShort = errors.New("sniff: need more bytes")
	errBad   = errors.New("sniff: malformed")
)

// parseClientHello returns the ClientHello's host name, "" and no error when
// it has none (or one that is not a valid name), errShort when hs stops
// before that is known, errBad when it is not a ClientHello.
func parseClientHello(hs []byte) (string, error) {
	p := parser{b: hs, end: len(hs)}
	if len(hs) == 0 {
		return "", errShort
	}
	if hs[0] != handshakeClientHello {
		return "", errBad
	}
	p.end = 4 // the header, until its length is known
	if err := p.skip(1); err != nil {
		return "", err
	}
	n, err := p.u24()
	if err != nil {
		return "", err
	}
	p.end = 4 + n
	// legacy_version: 0x0300..0x0303 (TLS 1.3 keeps 0x0303 here).
	v, err := p.u16()
	if err != nil {
		return "", err
	}
	if v>>8 != 3 {
		return "", errBad
	}
	if err := p.skip(32); err != nil { // random
		return "", err
	}
	sid, err := p.vec(1)
	if err != nil {
		return "", err
	}
	if sid.end-sid.pos > 32 {
		return "", errBad
	}
	suites, err := p.vec(2)
	if err != nil {
		return "", err
	}
	if n := suites.end - suites.pos; n < 2 || n%2 != 0 {
		return "", errBad
	}
	comp, err := p.vec(1)
	if err != nil {
		return "", err
	}
	if comp.end == comp.pos {
		return "", errBad
	}
	if p.pos == p.end {
		return "", nil // a TLS 1.2 ClientHello may have no extensions
	}
	exts, err := p.vec(2)
	if err != nil {
		return "", err
	}
	for exts.pos < exts.end {
		typ, err := exts.u16()
		if err != nil {
			return "", err
		}
		data, err := exts.vec(2)
		if err != nil {
			return "", err
		}
		if typ == extServerName {
			return parseServerName(data)
		}
	}
	return "", nil
}

// parseServerName reads the ServerNameList of a server_name extension
// (RFC 6066 section 3) and returns its host_name.
func parseServerName(p parser) (string, error) {
	list, err := p.vec(2)
	if err != nil {
		return "", err
	}
	for list.pos < list.end {
		typ, err := list.u8()
		if err != nil {
			return "", err
		}
		name, err := list.vec(2)
		if err != nil {
			return "", err
		}
		if typ != serverNameHostName {
			continue
		}
		b, err := name.bytes(name.end - name.pos)
		if err != nil {
			return "", err
		}
		host, _ := normalizeName(b)
		return host, nil
	}
	return "", nil
}

// parser reads big-endian fields and length-prefixed vectors from b[pos:end].
// b may stop short of end: a read past len(b) but within end is errShort (the
// bytes are still to come), a read past end is errBad (the message lies).
type parser struct {
	b        []byte
	pos, end int
}

func (p *parser) need(n int) error {
	if n > p.end-p.pos {
		return errBad
	}
	if p.pos+n > len(p.b) {
		return errShort
	}
	return nil
}

// skip moves past n bytes that need not be there yet.
func (p *parser) skip(n int) error {
	if n > p.end-p.pos {
		return errBad
	}
	p.pos += n
	return nil
}

func (p *parser) bytes(n int) ([]byte, error) {
	if err := p.need(n); err != nil {
		return nil, err
	}
	b := p.b[p.pos : p.pos+n]
	p.pos += n
	return b, nil
}

func (p *parser) uint(n int) (int, error) {
	b, err := p.bytes(n)
	if err != nil {
		return 0, err
	}
	v := 0
	for _, c := range b {
		v = v<<8 | int(c)
	}
	return v, nil
}

func (p *parser) u8() (int, error)  { return p.uint(1) }
func (p *parser) u16() (int, error) { return p.uint(2) }
func (p *parser) u24() (int, error) { return p.uint(3) }

// vec reads a vector's length (lenBytes wide) and returns a parser over its
// contents, which need not all be there yet; p moves past them.
func (p *parser) vec(lenBytes int) (parser, error) {
	n, err := p.uint(lenBytes)
	if err != nil {
		return parser{}, err
	}
	if n > p.end-p.pos {
		return parser{}, errBad
	}
	sub := parser{b: p.b, pos: p.pos, end: p.pos + n}
	p.pos += n
	return sub, nil
}
