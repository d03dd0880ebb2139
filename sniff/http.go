package sniff

import (
	"bytes"
	"strings"
)

const maxMethodLen = 24 // longer than every registered method

// HTTPHost reads the name an HTTP/1.x request at the start of b is for
// (RFC 9112 section 3.2): the authority of an absolute-form request-target
// ("GET http://example.com/ HTTP/1.1", which takes precedence over Host),
// else the first Host header field (its name matched case-insensitively).
// The port is stripped. Lines may end in CRLF or a bare LF.
//
// A request whose header section ends without a Host, with an empty Host or
// with an IP literal is NoName, as is a CONNECT request: its authority-form
// target names the tunnel's far end, not the server the connection reaches.
// Anything that is not an HTTP/1.0 or HTTP/1.1 request line is NotMatch.
func HTTPHost(b []byte) (string, Verdict) {
	line, rest, complete := cutLine(b)
	method, target, v := requestLine(line, complete)
	if v != Found {
		return "", v
	}
	if string(method) == "CONNECT" {
		return "", NoName
	}
	if auth, ok := absoluteAuthority(target); ok {
		if host, ok := hostOf(auth); ok {
			return host, Found
		}
		return "", NoName
	}
	for {
		line, rest, complete = cutLine(rest)
		if !complete {
			return "", NeedMore
		}
		if len(line) == 0 {
			return "", NoName // end of the header section
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // obs-fold continuation of the previous field
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || !isToken(name) {
			return "", NotMatch
		}
		if len(name) == 4 && strings.EqualFold(string(name), "host") {
			if host, ok := hostOf(bytes.Trim(value, " \t")); ok {
				return host, Found
			}
			return "", NoName
		}
	}
}

// cutLine returns the line at the start of b without its CRLF or LF, the
// bytes after it, and whether the line is complete. An incomplete line
// loses a last CR too: it may be the first half of the CRLF.
func cutLine(b []byte) (line, rest []byte, complete bool) {
	i := bytes.IndexByte(b, '\n')
	line, complete = b, false
	if i >= 0 {
		line, rest, complete = b[:i], b[i+1:], true
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, rest, complete
}

// requestLine checks the request line "METHOD SP target SP HTTP/1.x", which
// may be a prefix (complete false). Found means the line is whole and good.
func requestLine(line []byte, complete bool) (method, target []byte, v Verdict) {
	sp := bytes.IndexByte(line, ' ')
	method = line
	if sp >= 0 {
		method = line[:sp]
	}
	if len(method) > maxMethodLen || sp == 0 {
		return nil, nil, NotMatch
	}
	for _, c := range method {
		if !('A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return nil, nil, NotMatch
		}
	}
	if sp < 0 {
		if complete {
			return nil, nil, NotMatch
		}
		return nil, nil, NeedMore
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	target = rest
	if sp >= 0 {
		target = rest[:sp]
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return nil, nil, NotMatch
		}
	}
	if sp < 0 {
		if complete {
			return nil, nil, NotMatch
		}
		return nil, nil, NeedMore
	}
	if sp == 0 {
		return nil, nil, NotMatch
	}
	version := rest[sp+1:]
	const want = "HTTP/1.x"
	for i, c := range version {
		switch {
		case i >= len(want):
			return nil, nil, NotMatch
		case i == len(want)-1:
			if c != '0' && c != '1' {
				return nil, nil, NotMatch
			}
		case c != want[i]:
			return nil, nil, NotMatch
		}
	}
	if !complete {
		return nil, nil, NeedMore
	}
	if len(version) != len(want) {
		return nil, nil, NotMatch
	}
	return method, target, Found
}

// absoluteAuthority returns the authority of an absolute-form http(s) URI.
func absoluteAuthority(target []byte) ([]byte, bool) {
	i := bytes.Index(target, []byte("://"))
	if i < 0 {
		return nil, false
	}
	scheme := string(target[:i])
	if !strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") &&
		!strings.EqualFold(scheme, "ws") && !strings.EqualFold(scheme, "wss") {
		return nil, false
	}
	auth := target[i+3:]
	if j := bytes.IndexAny(auth, "/?#"); j >= 0 {
		auth = auth[:j]
	}
	if j := bytes.LastIndexByte(auth, '@'); j >= 0 {
		auth = auth[j+1:] // userinfo
	}
	return auth, true
}

// hostOf returns the name in host[:port], normalised; false for an empty or
// bad name, an IP literal (bracketed IPv6 included) or a bad port.
func hostOf(hostport []byte) (string, bool) {
	if len(hostport) > 0 && hostport[0] == '[' {
		return "", false // an IPv6 literal
	}
	host := hostport
	if i := bytes.LastIndexByte(hostport, ':'); i >= 0 {
		host = hostport[:i]
		port := hostport[i+1:]
		if len(port) > 5 {
			return "", false
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return "", false
			}
		}
	}
	return normalizeName(host)
}

// isToken reports whether b is an RFC 9110 token (a field name).
func isToken(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
