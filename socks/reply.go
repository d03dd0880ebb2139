package socks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Reply is a SOCKS5 reply code (RFC 1928 section 6).
type Reply byte

// Reply codes.
const (
	Succeeded               Reply = 0x00
	GeneralFailure          Reply = 0x01
	NotAllowed              Reply = 0x02 // connection not allowed by ruleset
	NetworkUnreachable      Reply = 0x03
	HostUnreachable         Reply = 0x04
	ConnectionRefused       Reply = 0x05
	TTLExpired              Reply = 0x06
	CommandNotSupported     Reply = 0x07
	AddressTypeNotSupported Reply = 0x08
)

var replyText = [...]string{
	Succeeded:               "succeeded",
	GeneralFailure:          "general SOCKS server failure",
	NotAllowed:              "connection not allowed by ruleset",
	NetworkUnreachable:      "network unreachable",
	HostUnreachable:         "host unreachable",
	ConnectionRefused:       "connection refused",
	TTLExpired:              "TTL expired",
	CommandNotSupported:     "command not supported",
	AddressTypeNotSupported: "address type not supported",
}

func (r Reply) String() string {
	if int(r) < len(replyText) {
		return replyText[r]
	}
	return fmt.Sprintf("unassigned reply 0x%02x", byte(r))
}

// Reply4 returns the SOCKS4 reply code that stands for r: granted for
// success, rejected-or-failed (0x5B) for everything else.
func (r Reply) Reply4() byte {
	if r == Succeeded {
		return Reply4Granted
	}
	return Reply4Rejected
}

// ReplyError is a failure reply received from (or to be sent by) a SOCKS
// server. Errors returned by the client wrap it so callers can inspect the
// code with errors.As.
type ReplyError struct {
	Version byte  // Version4 or Version5
	Code    Reply // for SOCKS4, the SOCKS5 equivalent (GeneralFailure for 0x5B..0x5D)
	Code4   byte  // the raw SOCKS4 code, 0 for SOCKS5
}

func (e *ReplyError) Error() string {
	if e.Version == Version4 {
		switch e.Code4 {
		case Reply4NoIdentd:
			return "socks4: request rejected: identd unreachable (0x5c)"
		case Reply4IdentMismatch:
			return "socks4: request rejected: identd user mismatch (0x5d)"
		}
		return fmt.Sprintf("socks4: request rejected or failed (0x%02x)", e.Code4)
	}
	return fmt.Sprintf("socks5: %v (0x%02x)", e.Code, byte(e.Code))
}

// Timeout reports whether the reply means the target timed out or could not
// be reached, so net.Error-style callers can treat it as transient.
func (e *ReplyError) Timeout() bool { return e.Code == TTLExpired }

// Is lets errors.Is(err, syscall.ECONNREFUSED) and friends see through a
// SOCKS5 reply, so a proxied dial fails like a direct one.
func (e *ReplyError) Is(target error) bool {
	switch e.Code {
	case ConnectionRefused:
		return target == syscall.ECONNREFUSED
	case NetworkUnreachable:
		return target == syscall.ENETUNREACH
	case HostUnreachable:
		return target == syscall.EHOSTUNREACH
	}
	return false
}

// ErrNotAllowed is what a Dialer returns (wrapped) when a rule forbids the
// destination; servers answer it with 0x02.
var ErrNotAllowed = errors.New("connection not allowed by ruleset")

// ReplyForError maps the error of a failed dial to the reply a server sends:
// a rule denial is 0x02, refusal 0x05, an unreachable network 0x03, an
// unreachable host, a failed name lookup or a timeout 0x04, a reply from an
// upstream SOCKS server is passed on unchanged. Anything else is 0x01.
func ReplyForError(err error) Reply {
	var re *ReplyError
	var dnsErr *net.DNSError
	switch {
	case err == nil:
		return Succeeded
	case errors.Is(err, ErrNotAllowed):
		return NotAllowed
	case errors.As(err, &re) && re.Version == Version5:
		return re.Code
	case errors.Is(err, syscall.ECONNREFUSED):
		return ConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return NetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.EHOSTDOWN):
		return HostUnreachable
	case errors.As(err, &dnsErr):
		return HostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return HostUnreachable
	case errors.Is(err, ErrAddressType):
		return AddressTypeNotSupported
	case errors.Is(err, ErrCommand):
		return CommandNotSupported
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return HostUnreachable
	}
	return GeneralFailure
}
