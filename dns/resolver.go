package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DialFunc opens a connection; internal/direct's dialer and the SOCKS
// client's DialContext have this shape.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// DefaultResolverTimeout bounds one exchange when a resolver is given none.
const DefaultResolverTimeout = 5 * time.Second

// maxStrayResponses bounds how many unrelated datagrams a UDP exchange skips
// while it waits for its answer.
const maxStrayResponses = 16

// NewUDPResolver returns a Resolver that sends each query over UDP to addr
// ("host:port") through dial, on a fresh socket and with a fresh random ID,
// and retries over TCP when the answer comes back truncated. A nil dial uses
// a zero net.Dialer (production code passes internal/direct's, so the socket
// cannot loop back into the TUN); timeout <= 0 means DefaultResolverTimeout.
func NewUDPResolver(addr string, dial func(ctx context.Context, network, address string) (net.Conn, error), timeout time.Duration) Resolver {
	return &netResolver{addr: addr, dial: orDefaultDial(dial), timeout: orDefaultTimeout(timeout), udp: true}
}

// NewTCPResolver returns a Resolver that sends each query over TCP
// (RFC 7766 framing) to addr through dial, one connection per query. Through
// a proxy, dial is the SOCKS client's CONNECT dialer and addr the upstream
// resolver as the proxy sees it. A nil dial uses a zero net.Dialer;
// timeout <= 0 means DefaultResolverTimeout.
func NewTCPResolver(addr string, dial func(ctx context.Context, network, address string) (net.Conn, error), timeout time.Duration) Resolver {
	return &netResolver{addr: addr, dial: orDefaultDial(dial), timeout: orDefaultTimeout(timeout)}
}

func orDefaultDial(d DialFunc) DialFunc {
	if d == nil {
		var nd net.Dialer
		return nd.DialContext
	}
	return d
}

func orDefaultTimeout(t time.Duration) time.Duration {
	if t <= 0 {
		return DefaultResolverTimeout
	}
	return t
}

type netResolver struct {
	addr    string
	dial    DialFunc
	timeout time.Duration
	udp     bool
	bufs    sync.Pool // of *[]byte, maxMsg long: UDP answers can be that large
}

// Exchange implements Resolver. The response carries the query's own ID.
func (r *netResolver) Exchange(ctx context.Context, query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, fmt.Errorf("dns: exchange: malformed query: %w", err)
	}
	q, err := p.Question()
	if err != nil {
		return nil, fmt.Errorf("dns: exchange: malformed query question: %w", err)
	}
	if len(query) > maxMsg {
		return nil, fmt.Errorf("dns: exchange: query of %d bytes is too large", len(query))
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()

	msg := make([]byte, len(query))
	copy(msg, query)
	id := uint16(rand.Uint32())
	binary.BigEndian.PutUint16(msg, id)

	var resp []byte
	if r.udp {
		resp, err = r.exchangeUDP(ctx, msg, id, &q)
		if err == nil && resp[2]&0x02 != 0 { // TC: ask again over TCP
			resp, err = r.exchangeTCP(ctx, msg, id, &q)
		}
	} else {
		resp, err = r.exchangeTCP(ctx, msg, id, &q)
	}
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(resp, h.ID)
	return resp, nil
}

// dialConn dials network and ties the connection's deadline to ctx.
func (r *netResolver) dialConn(ctx context.Context, network string) (net.Conn, func(), error) {
	c, err := r.dial(ctx, network, r.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: dial %s %s: %w", network, r.addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop(); c.Close() }, nil
}

func (r *netResolver) exchangeUDP(ctx context.Context, msg []byte, id uint16, q *dnsmessage.Question) ([]byte, error) {
	c, done, err := r.dialConn(ctx, "udp")
	if err != nil {
		return nil, err
	}
	defer done()
	if _, err := c.Write(msg); err != nil {
		return nil, r.ioErr(ctx, "udp", err)
	}
	bp, _ := r.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, maxMsg)
		bp = &b
	}
	defer r.bufs.Put(bp)
	buf := *bp
	for range maxStrayResponses {
		n, err := c.Read(buf)
		if err != nil {
			return nil, r.ioErr(ctx, "udp", err)
		}
		if checkResponse(buf[:n], id, q, false) == nil {
			resp := make([]byte, n)
			copy(resp, buf[:n])
			return resp, nil
		}
		// A late answer to an earlier query, or spoofing: keep waiting.
	}
	return nil, fmt.Errorf("dns: udp exchange with %s: %d datagrams that do not answer the query", r.addr, maxStrayResponses)
}

func (r *netResolver) exchangeTCP(ctx context.Context, msg []byte, id uint16, q *dnsmessage.Question) ([]byte, error) {
	c, done, err := r.dialConn(ctx, "tcp")
	if err != nil {
		return nil, err
	}
	defer done()
	out := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(out, uint16(len(msg)))
	copy(out[2:], msg)
	if _, err := c.Write(out); err != nil {
		return nil, r.ioErr(ctx, "tcp", err)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, r.ioErr(ctx, "tcp", err)
	}
	resp := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		return nil, r.ioErr(ctx, "tcp", err)
	}
	if err := checkResponse(resp, id, q, false); err != nil {
		return nil, fmt.Errorf("dns: tcp exchange with %s: %w", r.addr, err)
	}
	return resp, nil
}

// ioErr wraps err, preferring the context's error when it ended the exchange.
func (r *netResolver) ioErr(ctx context.Context, network string, err error) error {
	cerr := ctx.Err()
	if _, ok := ctx.Deadline(); ok && cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The socket's deadline is the context's; its timer may not have
		// fired yet.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("dns: %s exchange with %s: %w (%w)", network, r.addr, cerr, err)
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("dns: %s exchange with %s: %w", network, r.addr, err)
}

// Nameserver is an upstream resolver as configured: the network it is asked
// over ("udp" or "tcp") and its address.
type Nameserver struct {
	Network string
	Addr    netip.AddrPort
}

// String returns the nameserver as written in a config: tcp://addr for
// TCP, the address alone for UDP.
func (n Nameserver) String() string {
	if n.Network == "tcp" {
		return "tcp://" + n.Addr.String()
	}
	return n.Addr.String()
}

// NewNameservers returns a Resolver over servers, each asked over its own
// network through dial, tried in turn (see Fallback). servers must not be
// empty.
func NewNameservers(servers []Nameserver, dial DialFunc, timeout time.Duration) Resolver {
	rs := make([]Resolver, len(servers))
	for i, s := range servers {
		if s.Network == "tcp" {
			rs[i] = NewTCPResolver(s.Addr.String(), dial, timeout)
		} else {
			rs[i] = NewUDPResolver(s.Addr.String(), dial, timeout)
		}
	}
	return NewFallback(rs...)
}

// NewNameserversTCP is NewNameservers with every server asked over TCP,
// whatever its network: dial is a proxy's CONNECT, and the servers are
// reached from the proxy's side, so a query for a proxied name never leaves
// this host in the clear.
func NewNameserversTCP(servers []Nameserver, dial DialFunc, timeout time.Duration) Resolver {
	rs := make([]Resolver, len(servers))
	for i, s := range servers {
		rs[i] = NewTCPResolver(s.Addr.String(), dial, timeout)
	}
	return NewFallback(rs...)
}

// GoResolver returns a net.Resolver that sends the lookups Go makes itself
// (a DIRECT flow known only by name) to servers through dial, never to the
// system's resolver, which may point back at tunsocks. Go's resolver dials
// again for each retry; each dial takes the next server, so a dead one
// costs one attempt. servers must not be empty.
func GoResolver(servers []Nameserver, dial DialFunc) *net.Resolver {
	var next atomic.Uint32
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		s := servers[int(next.Add(1)-1)%len(servers)]
		return dial(ctx, s.Network, s.Addr.String())
	}}
}
