package stack

import (
	"net/netip"
	"sync"
)

// Handshakes in flight.
//
// Every connection attempt of the app (a SYN) holds resources from the
// moment the stack sees it until the app's handshake completes: a goroutine,
// the Handler's upstream dial, then a half-open connection (gVisor's
// endpoint in SYN-RCVD, or in system TCP mode the kernel's). A SYN from a
// spoofed source is never completed. gVisor's forwarder held such requests
// until its SYN-ACK retransmissions gave up (about 128 s) and ignored every
// new SYN once 1024 were in flight, so 2,000 spoofed SYNs stopped all new
// TCP for two minutes.
//
// So the stack bounds the attempts in flight itself, in total
// (TCPOptions.MaxInFlight) and per app source address
// (MaxInFlightPerSource), and at a bound it sheds the OLDEST attempt (of
// that source, or of all) instead of ignoring the new one: under a flood,
// a real app's SYN, which is newer than the flood's, still gets through,
// and its own handshake completes within microseconds. A shed attempt that
// the Handler is still deciding is dropped silently (its context is
// cancelled, which stops its upstream dial; a real app retransmits its
// SYN), one that was accepted has its handshake aborted (see
// TCPRequest.Accept). Accepted attempts also have a deadline
// (TCPOptions.HandshakeTimeout). Both TCP stacks share this table.
//
// gVisor offers SYN cookies only to listening endpoints, not to the
// forwarder this stack uses to decide before it answers a SYN (pinned
// gVisor 20260905035102-160fafc42237, transport/tcp/accept.go
// handleListenSegment); cookies would also mean answering SYNs before the
// Handler has dialed, which breaks "a refused upstream is a RST".

// handshakes is the table of attempts in flight, oldest first.
type handshakes struct {
	max, perSrc int

	mu         sync.Mutex
	head, tail *TCPRequest // oldest, newest
	n          int
	bySrc      map[netip.Addr]int
}

func newHandshakes(max, perSrc int) *handshakes {
	return &handshakes{max: max, perSrc: perSrc, bySrc: make(map[netip.Addr]int)}
}

// add enters r as the newest attempt. When that would exceed a bound it
// takes out and returns the attempt to shed: the oldest of r's source when
// the source is at its bound, else the oldest of all. The caller sheds it.
func (h *handshakes) add(r *TCPRequest) (victim *TCPRequest) {
	src := r.src.Addr()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bySrc[src] >= h.perSrc {
		for v := h.head; v != nil; v = v.hsNext {
			if v.src.Addr() == src {
				victim = v
				break
			}
		}
	} else if h.n >= h.max {
		victim = h.head
	}
	if victim != nil {
		h.unlinkLocked(victim)
	}
	r.hsPrev, r.hsNext = h.tail, nil
	if h.tail != nil {
		h.tail.hsNext = r
	} else {
		h.head = r
	}
	h.tail = r
	r.inTable = true
	h.n++
	h.bySrc[src]++
	return victim
}

// remove takes r out of the table if it is still in it.
func (h *handshakes) remove(r *TCPRequest) {
	h.mu.Lock()
	if r.inTable {
		h.unlinkLocked(r)
	}
	h.mu.Unlock()
}

func (h *handshakes) unlinkLocked(r *TCPRequest) {
	if r.hsPrev != nil {
		r.hsPrev.hsNext = r.hsNext
	} else {
		h.head = r.hsNext
	}
	if r.hsNext != nil {
		r.hsNext.hsPrev = r.hsPrev
	} else {
		h.tail = r.hsPrev
	}
	r.hsPrev, r.hsNext, r.inTable = nil, nil, false
	h.n--
	src := r.src.Addr()
	if h.bySrc[src] <= 1 {
		delete(h.bySrc, src)
	} else {
		h.bySrc[src]--
	}
}

// accepting returns the attempts in the table (abortHandshake acts on
// those an Accept is completing and ignores the rest).
func (h *handshakes) accepting() []*TCPRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	rs := make([]*TCPRequest, 0, h.n)
	for r := h.head; r != nil; r = r.hsNext {
		rs = append(rs, r)
	}
	return rs
}

// len is the number of attempts in flight.
func (h *handshakes) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}
