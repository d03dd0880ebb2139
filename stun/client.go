package stun

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

// Response is what one Binding transaction learnt.
type Response struct {
	// Mapped is the request's source as the server saw it
	// (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
	Mapped netip.AddrPort
	// Origin is where the server says it sent the response from
	// (RESPONSE-ORIGIN); invalid when absent.
	Origin netip.AddrPort
	// Other is the server's alternate address (OTHER-ADDRESS); invalid
	// when absent (a server without RFC 5780 support).
	Other netip.AddrPort
	// From is the response's source as the receiving socket reports it;
	// through a SOCKS5 relay, the address in the relay's UDP header.
	From netip.AddrPort
	// RTT is the time from the first transmission to the response.
	RTT time.Duration
}

// ErrTimeout is the cause when no response arrived in time. For the
// filtering tests that is an answer, not a failure.
var ErrTimeout = errors.New("stun: no response")

// Retransmit is the default retransmission schedule of Request: the request
// is sent again after each interval until the context ends (RFC 8489's RTO
// doubling, shortened for a discovery that waits on purpose).
var retransmit = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second, time.Second}

// Request runs one Binding transaction with server over pc, with
// CHANGE-REQUEST flags change (0 for none). It waits until ctx is done for
// the response; with no response the error wraps ErrTimeout. Datagrams that
// are not the response (other transactions, not STUN) are ignored. pc's
// read deadline is used and left cleared.
func Request(ctx context.Context, pc net.PacketConn, server net.Addr, change uint32) (*Response, error) {
	req := &Message{Type: BindingRequest}
	if _, err := rand.Read(req.TransactionID[:]); err != nil {
		return nil, err
	}
	if change != 0 {
		req.Add(AttrChangeRequest, binary.BigEndian.AppendUint32(nil, change))
	}
	b, err := req.Append(nil, true)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if _, err := pc.WriteTo(b, server); err != nil {
		return nil, fmt.Errorf("stun: send to %v: %w", server, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = start.Add(5 * time.Second)
	}
	defer pc.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, MaxMessageLen+1)
	next, step := start, 0
	for {
		if step < len(retransmit) {
			next = next.Add(retransmit[step])
		} else {
			next = deadline
		}
		wake := next
		if deadline.Before(wake) {
			wake = deadline
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("stun: %v: %w (%w)", server, ErrTimeout, ctx.Err())
		}
		pc.SetReadDeadline(wake)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if ctx.Err() != nil || !time.Now().Before(deadline) {
					return nil, fmt.Errorf("stun: %v: %w in %v", server, ErrTimeout, time.Since(start).Round(time.Millisecond))
				}
				if step < len(retransmit) {
					step++
					if _, err := pc.WriteTo(b, server); err != nil {
						return nil, fmt.Errorf("stun: send to %v: %w", server, err)
					}
				}
				continue
			}
			return nil, fmt.Errorf("stun: read: %w", err)
		}
		m, err := Parse(buf[:n])
		if err != nil || m.TransactionID != req.TransactionID || m.Type.Method() != MethodBinding {
			continue
		}
		if m.Type.Class() == ClassErrorResponse {
			if v, ok := m.Get(AttrErrorCode); ok {
				if ec, err := ParseErrorCode(v); err == nil {
					return nil, ec
				}
			}
			return nil, errors.New("stun: error response without ERROR-CODE")
		}
		if m.Type.Class() != ClassSuccessResponse {
			continue
		}
		r := &Response{From: addrPort(from), RTT: time.Since(start)}
		if v, ok := m.Get(AttrXORMappedAddress); ok {
			r.Mapped, err = ParseXORAddress(v, m.TransactionID)
		} else if v, ok := m.Get(AttrMappedAddress); ok {
			r.Mapped, err = ParseAddress(v)
		} else {
			err = errors.New("stun: response without a mapped address")
		}
		if err != nil {
			return nil, err
		}
		if v, ok := m.Get(AttrResponseOrigin); ok {
			r.Origin, _ = ParseAddress(v)
		}
		if v, ok := m.Get(AttrOtherAddress); ok {
			r.Other, _ = ParseAddress(v)
		}
		return r, nil
	}
}

// Behaviour is a NAT mapping or filtering behaviour (RFC 4787, RFC 5780).
type Behaviour int

// Behaviours, from the friendliest.
const (
	Unknown              Behaviour = iota
	EndpointIndependent            // one mapping / anyone may answer it
	AddressDependent               // per destination IP
	AddressPortDependent           // per destination IP and port
)

func (b Behaviour) String() string {
	switch b {
	case EndpointIndependent:
		return "endpoint-independent"
	case AddressDependent:
		return "address-dependent"
	case AddressPortDependent:
		return "address-and-port-dependent"
	}
	return "unknown"
}

// ParseBehaviour accepts the String forms and the short ones: eim/eif,
// adm/adf, apdm/apdf.
func ParseBehaviour(s string) (Behaviour, error) {
	switch s {
	case "endpoint-independent", "eim", "eif", "ei":
		return EndpointIndependent, nil
	case "address-dependent", "adm", "adf", "ad":
		return AddressDependent, nil
	case "address-and-port-dependent", "apdm", "apdf", "apd":
		return AddressPortDependent, nil
	}
	return Unknown, fmt.Errorf("%q: want endpoint-independent (eim/eif), address-dependent (adm/adf) or address-and-port-dependent (apdm/apdf)", s)
}

// Options tunes the discovery tests.
type Options struct {
	// Wait is how long one transaction waits for its response; in the
	// filtering tests a missing response is the answer, so this is the
	// price of each "no". 0 means 3 s.
	Wait time.Duration
}

func (o Options) wait() time.Duration {
	if o.Wait > 0 {
		return o.Wait
	}
	return 3 * time.Second
}

// MappingResult is the outcome of the RFC 5780 section 4.3 tests.
type MappingResult struct {
	Behaviour Behaviour
	// Mapped holds the mapped address of test I (primary), II (alternate
	// IP, primary port) and III (alternate IP and port); III is invalid
	// when II already decided.
	Mapped [3]netip.AddrPort
	// Other is the server's alternate address.
	Other netip.AddrPort
	// SourceMismatch lists responses whose source, as pc reported it, was
	// not the RESPONSE-ORIGIN the server named ("" when all agreed).
	SourceMismatch string
}

// DiscoverMapping runs the mapping tests against server (the primary
// address) over pc.
func DiscoverMapping(ctx context.Context, pc net.PacketConn, server netip.AddrPort, o Options) (*MappingResult, error) {
	res := &MappingResult{}
	r1, err := o.request(ctx, pc, server, 0, res)
	if err != nil {
		return nil, fmt.Errorf("test I (binding to %s): %w", server, err)
	}
	if !r1.Other.IsValid() {
		return nil, fmt.Errorf("the STUN server %s sends no OTHER-ADDRESS: it does not support RFC 5780 NAT discovery", server)
	}
	res.Other, res.Mapped[0] = r1.Other, r1.Mapped
	alt1 := netip.AddrPortFrom(r1.Other.Addr(), server.Port())
	r2, err := o.request(ctx, pc, alt1, 0, res)
	if err != nil {
		return nil, fmt.Errorf("test II (binding to %s): %w", alt1, err)
	}
	res.Mapped[1] = r2.Mapped
	if r2.Mapped == r1.Mapped {
		res.Behaviour = EndpointIndependent
		return res, nil
	}
	r3, err := o.request(ctx, pc, r1.Other, 0, res)
	if err != nil {
		return nil, fmt.Errorf("test III (binding to %s): %w", r1.Other, err)
	}
	res.Mapped[2] = r3.Mapped
	if r3.Mapped == r2.Mapped {
		res.Behaviour = AddressDependent
	} else {
		res.Behaviour = AddressPortDependent
	}
	return res, nil
}

func (o Options) request(ctx context.Context, pc net.PacketConn, to netip.AddrPort, change uint32, res interface{ mismatch(string) }) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, o.wait())
	defer cancel()
	r, err := Request(ctx, pc, net.UDPAddrFromAddrPort(to), change)
	if err != nil {
		return nil, err
	}
	want := r.Origin
	if !want.IsValid() {
		// No RESPONSE-ORIGIN: the source must be where the request
		// should have been answered from.
		want = to
	}
	if r.From != want {
		res.mismatch(fmt.Sprintf("response from %s claims origin %s", r.From, want))
	}
	return r, nil
}

func (m *MappingResult) mismatch(s string) {
	if m.SourceMismatch == "" {
		m.SourceMismatch = s
	}
}

// FilteringResult is the outcome of the RFC 5780 section 4.4 tests.
type FilteringResult struct {
	Behaviour Behaviour
	// Other is the server's alternate address.
	Other netip.AddrPort
	// SourceMismatch is as in MappingResult; it also names a changed
	// response whose origin is not the address CHANGE-REQUEST asked for.
	SourceMismatch string
}

func (f *FilteringResult) mismatch(s string) {
	if f.SourceMismatch == "" {
		f.SourceMismatch = s
	}
}

// DiscoverFiltering runs the filtering tests against server over pc, which
// should be a fresh binding: earlier traffic to the alternate address would
// open the filter the test probes.
func DiscoverFiltering(ctx context.Context, pc net.PacketConn, server netip.AddrPort, o Options) (*FilteringResult, error) {
	res := &FilteringResult{}
	r1, err := o.request(ctx, pc, server, 0, res)
	if err != nil {
		return nil, fmt.Errorf("test I (binding to %s): %w", server, err)
	}
	if !r1.Other.IsValid() {
		return nil, fmt.Errorf("the STUN server %s sends no OTHER-ADDRESS: it does not support RFC 5780 NAT discovery", server)
	}
	res.Other = r1.Other
	r2, err := o.request(ctx, pc, server, ChangeIP|ChangePort, res)
	switch {
	case err == nil:
		if r2.Origin.IsValid() && r2.Origin != r1.Other {
			res.mismatch(fmt.Sprintf("CHANGE-REQUEST(IP, port) answered from %s, not the alternate %s", r2.Origin, r1.Other))
		}
		res.Behaviour = EndpointIndependent
		return res, nil
	case !errors.Is(err, ErrTimeout):
		return nil, fmt.Errorf("test II (change IP and port): %w", err)
	}
	r3, err := o.request(ctx, pc, server, ChangePort, res)
	switch {
	case err == nil:
		if want := netip.AddrPortFrom(server.Addr(), r1.Other.Port()); r3.Origin.IsValid() && r3.Origin != want {
			res.mismatch(fmt.Sprintf("CHANGE-REQUEST(port) answered from %s, not %s", r3.Origin, want))
		}
		res.Behaviour = AddressDependent
	case errors.Is(err, ErrTimeout):
		res.Behaviour = AddressPortDependent
	default:
		return nil, fmt.Errorf("test III (change port): %w", err)
	}
	return res, nil
}

// Summary says in a sentence what a mapping and filtering behaviour mean
// for applications.
func Summary(mapping, filtering Behaviour) string {
	switch {
	case mapping == EndpointIndependent && filtering == EndpointIndependent:
		return "full cone (endpoint-independent mapping and filtering): games, WebRTC and P2P work"
	case mapping == EndpointIndependent && filtering == AddressDependent:
		return "restricted cone (endpoint-independent mapping, address-dependent filtering): P2P works with hole punching"
	case mapping == EndpointIndependent && filtering == AddressPortDependent:
		return "port-restricted cone (endpoint-independent mapping, address-and-port-dependent filtering): P2P mostly works with hole punching"
	case mapping == AddressDependent || mapping == AddressPortDependent:
		return "symmetric (" + mapping.String() + " mapping): expect broken P2P; WebRTC and games fall back to relays"
	}
	return "unknown NAT behaviour"
}
