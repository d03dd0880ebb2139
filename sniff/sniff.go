// Package sniff recovers a connection's destination name from its first
// bytes: the server_name of a TLS ClientHello (RFC 8446, RFC 6066), the Host
// of an HTTP/1.x request (RFC 9112), and the server_name of the ClientHello
// carried in the CRYPTO frames of QUIC v1 and v2 Initial packets (RFC 9000,
// RFC 9001, RFC 9369).
//
// Every function is pure: it reads only the bytes it is given, allocates in
// proportion to them, and never blocks. A stream sniffer is called with the
// whole prefix of the stream read so far and answers NeedMore while the
// prefix is consistent with its protocol but too short to tell; the caller
// bounds how many bytes and how long it waits. Once a prefix gets a verdict
// other than NeedMore, every longer prefix gets the same verdict (and name).
//
// A name is reported only when it is a syntactically valid DNS name
// (letters, digits, '-', '_', dots; labels of 1..63 bytes, 253 bytes in
// all), lowercased and without a trailing dot. An IP literal, an empty or
// malformed name is reported as NoName: the caller keeps the address it has.
package sniff

import (
	"strconv"
	"strings"
)

// Verdict says what a sniffer made of the bytes it was given.
type Verdict uint8

// Verdicts.
const (
	// NeedMore: the bytes are a prefix of a message of the protocol that
	// does not reach the name yet (or its absence).
	NeedMore Verdict = iota
	// NotMatch: the bytes are not (a prefix of) the protocol, or are
	// malformed. More bytes will not change that.
	NotMatch
	// NoName: the protocol, but the message carries no usable name (a
	// ClientHello without server_name, a Host that is an IP literal).
	NoName
	// Found: the name is in the result.
	Found
)

func (v Verdict) String() string {
	switch v {
	case NeedMore:
		return "need-more"
	case NotMatch:
		return "not-match"
	case NoName:
		return "no-name"
	case Found:
		return "found"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// Protocol is the protocol a sniffer recognised.
type Protocol uint8

// Protocols.
const (
	Unknown Protocol = iota
	TLS
	HTTP
	QUIC
)

func (p Protocol) String() string {
	switch p {
	case TLS:
		return "tls"
	case HTTP:
		return "http"
	case QUIC:
		return "quic"
	}
	return "unknown"
}

// Result is a sniffer's answer.
type Result struct {
	Verdict  Verdict
	Protocol Protocol // the protocol recognised: set with NoName and Found
	Host     string   // the name, with Found
}

// Stream sniffs the first bytes of a TCP stream (b is everything read so
// far): a TLS ClientHello or an HTTP/1.x request. The two are told apart by
// their first byte, so the answer is the one of the sniffer that matches.
func Stream(b []byte) Result {
	if len(b) == 0 {
		return Result{Verdict: NeedMore}
	}
	if b[0] == recordTypeHandshake {
		host, v := TLSServerName(b)
		return result(TLS, host, v)
	}
	host, v := HTTPHost(b)
	return result(HTTP, host, v)
}

func result(p Protocol, host string, v Verdict) Result {
	r := Result{Verdict: v, Host: host}
	if v == Found || v == NoName {
		r.Protocol = p
	}
	return r
}

// Name returns name lowercased and without a trailing dot when it is a
// valid DNS name and not an IP literal, the form every sniffer reports.
func Name(name string) (string, bool) { return normalizeName([]byte(name)) }

// normalizeName returns name lowercased and without a trailing dot when it is
// a valid DNS name and not an IP literal; ok is false otherwise.
func normalizeName(name []byte) (string, bool) {
	if len(name) > 0 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if len(name) == 0 || len(name) > 253 {
		return "", false
	}
	label, digitsAndDots := 0, true
	for _, c := range name {
		switch {
		case c == '.':
			if label == 0 {
				return "", false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-', c == '_':
			digitsAndDots = false
		case '0' <= c && c <= '9':
		default:
			return "", false
		}
		label++
		if label > 63 {
			return "", false
		}
	}
	if digitsAndDots {
		// 1.2.3.4, and numbers that only look like names: not a name.
		return "", false
	}
	// Every IP literal has a ':' or only digits and dots, so none is left.
	return strings.ToLower(string(name)), true
}
