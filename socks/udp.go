package socks

import (
	"errors"
	"fmt"
	"time"
)

// UDP request header (RFC 1928 section 7): RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA.

// FragLast is the high-order bit of FRAG that marks the last fragment.
const FragLast byte = 0x80

// ParseUDP parses a SOCKS5 UDP datagram and returns its FRAG byte, address
// and payload. The payload aliases b.
func ParseUDP(b []byte) (frag byte, addr Addr, payload []byte, err error) {
	if len(b) < 4 {
		return 0, Addr{}, nil, errShort
	}
	if b[0] != 0 || b[1] != 0 {
		return 0, Addr{}, nil, errors.New("socks: UDP header reserved bytes are not zero")
	}
	addr, n, err := DecodeAddr(b[3:])
	if err != nil {
		return 0, Addr{}, nil, err
	}
	return b[2], addr, b[3+n:], nil
}

// AppendUDPHeader appends the UDP request header for addr with FRAG frag.
func AppendUDPHeader(b []byte, frag byte, addr Addr) ([]byte, error) {
	return AppendAddr(append(b, 0, 0, frag), addr)
}

// MaxFragments is the largest number of fragments one datagram can be split
// into: FRAG positions run from 1 to 127.
const MaxFragments = 127

// Fragment splits payload into SOCKS5 UDP datagrams (header included) of at
// most chunk payload bytes each, numbered 1..n with the last one marked.
// A payload that fits in one chunk is sent unfragmented (FRAG 0).
func Fragment(addr Addr, payload []byte, chunk int) ([][]byte, error) {
	if chunk <= 0 {
		return nil, errors.New("socks: fragment size must be positive")
	}
	if len(payload) <= chunk {
		d, err := AppendUDPHeader(nil, 0, addr)
		if err != nil {
			return nil, err
		}
		return [][]byte{append(d, payload...)}, nil
	}
	n := (len(payload) + chunk - 1) / chunk
	if n > MaxFragments {
		return nil, fmt.Errorf("socks: %d-byte datagram needs %d fragments of %d bytes, at most %d are allowed", len(payload), n, chunk, MaxFragments)
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		frag := byte(i + 1)
		if i == n-1 {
			frag |= FragLast
		}
		d, err := AppendUDPHeader(nil, frag, addr)
		if err != nil {
			return nil, err
		}
		end := min((i+1)*chunk, len(payload))
		out = append(out, append(d, payload[i*chunk:end]...))
	}
	return out, nil
}

// Reassembler joins fragmented SOCKS5 UDP datagrams as RFC 1928 section 7
// describes: a reassembly queue and a timer. The queue is reinitialised when
// a fragment's position is not above the highest one processed (out of
// order), when its address differs from the queue's, and when the timer has
// run out. A datagram that would grow past MaxSize is dropped whole.
//
// One Reassembler serves one association; it is not safe for concurrent use.
type Reassembler struct {
	// Timeout is the reassembly timer; the RFC asks for at least 5 seconds.
	Timeout time.Duration
	// MaxSize caps the reassembled payload; 0 means 65507 bytes.
	MaxSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	addr     Addr
	highest  byte
	deadline time.Time
	buf      []byte
	dropping bool // the current sequence passed MaxSize: drop until it ends
}

// DefaultReassemblyTimeout is the reassembly timer used when Timeout is 0.
const DefaultReassemblyTimeout = 5 * time.Second

// Add takes one parsed datagram. It returns the complete payload and its
// address when frag is 0 or when frag completes a sequence; otherwise ok is
// false (kept for later, or dropped). The returned payload is only valid
// until the next call.
func (r *Reassembler) Add(frag byte, addr Addr, payload []byte) (full []byte, to Addr, ok bool) {
	if frag == 0 {
		r.reset()
		return payload, addr, true
	}
	now := r.now()
	pos := frag &^ FragLast
	if pos == 0 {
		// 0x80 alone is not a position; drop it.
		r.reset()
		return nil, Addr{}, false
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultReassemblyTimeout
	}
	if r.highest != 0 && (pos <= r.highest || now.After(r.deadline) || addr != r.addr) {
		r.reset()
	}
	if r.highest == 0 {
		if pos != 1 {
			// A sequence whose start was lost can never complete.
			return nil, Addr{}, false
		}
		r.addr = addr
		r.deadline = now.Add(timeout)
	} else if pos != r.highest+1 {
		// A gap: the missing fragment can no longer arrive in order.
		r.reset()
		return nil, Addr{}, false
	}
	r.highest = pos
	max := r.MaxSize
	if max <= 0 {
		max = 65507
	}
	if r.dropping || len(r.buf)+len(payload) > max {
		r.dropping = true
		r.buf = r.buf[:0]
	} else {
		r.buf = append(r.buf, payload...)
	}
	if frag&FragLast == 0 {
		return nil, Addr{}, false
	}
	dropped := r.dropping
	out, a := r.buf, r.addr
	r.highest, r.dropping = 0, false
	r.buf = r.buf[:0]
	if dropped {
		return nil, Addr{}, false
	}
	return out, a, true
}

// Pending reports whether a sequence is being reassembled.
func (r *Reassembler) Pending() bool { return r.highest != 0 }

func (r *Reassembler) reset() {
	r.highest, r.dropping = 0, false
	r.buf = r.buf[:0]
	r.addr = Addr{}
}

func (r *Reassembler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}
