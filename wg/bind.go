package wg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
)

// ListenFunc opens a UDP socket, as net.ListenConfig.ListenPacket does.
// tunsocks passes its direct dialer's, so the WireGuard socket carries the
// same mark (or interface binding, or namespace) as every other socket of
// its own and never loops into a TUN.
type ListenFunc func(ctx context.Context, network, address string) (net.PacketConn, error)

// Bind is wireguard-go's conn.Bind over UDP sockets made by a ListenFunc.
// With an unspecified address it listens on every address of the host, IPv4
// and IPv6, on one port; with an address, on that address only. Where the
// system can (Linux) it moves batches of datagrams per system call.
//
// Replies leave from the address the kernel's routing picks for the peer,
// which on a host with one address per network is the one the peer sent to.
type Bind struct {
	listen ListenFunc
	addr   netip.Addr
	ctx    context.Context

	mu  sync.Mutex
	v4  *net.UDPConn
	v6  *net.UDPConn
	pc4 *ipv4.PacketConn // nil where batching is not available
	pc6 *ipv6.PacketConn

	msgs sync.Pool // *[]ipv6.Message of len batch
}

// NewBind returns a Bind that opens its sockets with listen on addr (the
// zero Addr: every address). ctx bounds only the opening of sockets.
func NewBind(ctx context.Context, listen ListenFunc, addr netip.Addr) *Bind {
	b := &Bind{listen: listen, addr: addr.Unmap(), ctx: ctx}
	b.msgs.New = func() any {
		m := make([]ipv6.Message, bindBatch())
		for i := range m {
			m[i].Buffers = make([][]byte, 1)
		}
		return &m
	}
	return b
}

// batching reports whether x/net's ReadBatch and WriteBatch move several
// datagrams per system call here (recvmmsg/sendmmsg).
func batching() bool { return runtime.GOOS == "linux" || runtime.GOOS == "android" }

func bindBatch() int {
	if batching() {
		return conn.IdealBatchSize
	}
	return 1
}

// socketBuffer is the send and receive buffer asked for (what wireguard-go
// asks for its own sockets).
const socketBuffer = 7 << 20

// Endpoint is a peer's address as the Bind knows it.
type Endpoint netip.AddrPort

func (e Endpoint) ClearSrc()           {}
func (e Endpoint) SrcToString() string { return "" }
func (e Endpoint) DstToString() string { return netip.AddrPort(e).String() }
func (e Endpoint) DstIP() netip.Addr   { return netip.AddrPort(e).Addr() }
func (e Endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// DstToBytes is the address and port, for the handshake's cookie MACs.
func (e Endpoint) DstToBytes() []byte {
	ap := netip.AddrPort(e)
	b, _ := ap.Addr().MarshalBinary()
	return append(b, byte(ap.Port()), byte(ap.Port()>>8))
}

// ParseEndpoint reads "ip:port" or "[ipv6]:port".
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("wg: endpoint %q: want ip:port: %w", s, err)
	}
	return Endpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
}

// BatchSize is how many datagrams one receive or send moves.
func (b *Bind) BatchSize() int { return bindBatch() }

// SetMark is not how the mark gets there: the ListenFunc sets it (or
// none) on every socket. A non-zero mark through the UAPI is refused.
func (b *Bind) SetMark(mark uint32) error {
	if mark == 0 {
		return nil
	}
	return fmt.Errorf("wg: fwmark %d through the UAPI: %w (the socket gets tunsocks' own mark from its dialer)", mark, errors.ErrUnsupported)
}

func (b *Bind) open(network string, addr netip.Addr, port uint16) (*net.UDPConn, uint16, error) {
	host := ""
	if addr.IsValid() {
		host = addr.String()
	}
	pc, err := b.listen(b.ctx, network, net.JoinHostPort(host, strconv.Itoa(int(port))))
	if err != nil {
		return nil, 0, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, 0, fmt.Errorf("wg: listen %s gave a %T, want a *net.UDPConn", network, pc)
	}
	// One socket carries every peer's bursts (a batch is 128 datagrams):
	// the default buffer (about 200 KiB on Linux) overflows, and each
	// dropped datagram costs a TCP inside a retransmission timeout. The
	// system caps these at its maximum (net.core.rmem_max); forceBuffers
	// goes beyond it where allowed (CAP_NET_ADMIN). Failures only cost
	// speed.
	_ = uc.SetReadBuffer(socketBuffer)
	_ = uc.SetWriteBuffer(socketBuffer)
	forceBuffers(uc)
	return uc, uc.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
}

// Open listens on port (0: any free port, the same for IPv4 and IPv6).
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var v4, v6 *net.UDPConn
	var err error
	switch {
	case b.addr.IsValid() && !b.addr.IsUnspecified():
		network := "udp4"
		if b.addr.Is6() {
			network = "udp6"
		}
		var c *net.UDPConn
		if c, port, err = b.open(network, b.addr, port); err != nil {
			return nil, 0, err
		}
		if b.addr.Is4() {
			v4 = c
		} else {
			v6 = c
		}
	case b.addr.IsValid() && b.addr.Is4(): // 0.0.0.0: IPv4 only
		if v4, port, err = b.open("udp4", b.addr, port); err != nil {
			return nil, 0, err
		}
	case b.addr.IsValid(): // [::]: IPv6 only
		if v6, port, err = b.open("udp6", b.addr, port); err != nil {
			return nil, 0, err
		}
	default:
		want := port
		for tries := 0; ; tries++ {
			if v4, port, err = b.open("udp4", netip.IPv4Unspecified(), want); err != nil {
				return nil, 0, err
			}
			v6, _, err = b.open("udp6", netip.IPv6Unspecified(), port)
			if err == nil {
				break
			}
			if want == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
				v4.Close()
				continue // another port that is free in both families
			}
			if errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EPROTONOSUPPORT) {
				v6, err = nil, nil // a host without IPv6: IPv4 only
				break
			}
			v4.Close()
			return nil, 0, err
		}
	}
	var fns []conn.ReceiveFunc
	if v4 != nil {
		b.v4 = v4
		if batching() {
			b.pc4 = ipv4.NewPacketConn(v4)
			fns = append(fns, b.receiveBatch(b.pc4))
		} else {
			fns = append(fns, receiveOne(v4))
		}
	}
	if v6 != nil {
		b.v6 = v6
		if batching() {
			b.pc6 = ipv6.NewPacketConn(v6)
			fns = append(fns, b.receiveBatch(b.pc6))
		} else {
			fns = append(fns, receiveOne(v6))
		}
	}
	return fns, port, nil
}

// LocalAddrs are the addresses the Bind listens on; nil when closed.
func (b *Bind) LocalAddrs() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []netip.AddrPort
	for _, c := range []*net.UDPConn{b.v4, b.v6} {
		if c != nil {
			out = append(out, c.LocalAddr().(*net.UDPAddr).AddrPort())
		}
	}
	return out
}

type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

// ipv4.Message and ipv6.Message are both socket.Message.
var _ ipv6.Message = ipv4.Message{}

func (b *Bind) receiveBatch(pc batchConn) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		mp := b.msgs.Get().(*[]ipv6.Message)
		defer b.msgs.Put(mp)
		msgs := (*mp)[:min(len(bufs), len(*mp))]
		for i := range msgs {
			msgs[i].Buffers[0] = bufs[i]
			msgs[i].N, msgs[i].Addr = 0, nil
		}
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			return 0, err
		}
		for i := range n {
			sizes[i] = msgs[i].N
			ua, ok := msgs[i].Addr.(*net.UDPAddr)
			if !ok || sizes[i] == 0 {
				sizes[i] = 0
				continue
			}
			ap := ua.AddrPort()
			eps[i] = Endpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
		for i := range msgs {
			msgs[i].Buffers[0], msgs[i].Addr = nil, nil
		}
		return n, nil
	}
}

func receiveOne(c *net.UDPConn) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, ap, err := c.ReadFromUDPAddrPort(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		eps[0] = Endpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		return 1, nil
	}
}

// Send sends bufs to ep, in one system call where batching is available.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	dst := netip.AddrPort(e)
	b.mu.Lock()
	c, pc4, pc6 := b.v4, b.pc4, b.pc6
	var bc batchConn = pc4
	if dst.Addr().Is6() {
		c, bc = b.v6, pc6
	}
	b.mu.Unlock()
	if c == nil {
		return &net.OpError{Op: "write", Net: "udp", Addr: net.UDPAddrFromAddrPort(dst), Err: syscall.EAFNOSUPPORT}
	}
	if !batching() || bc == nil {
		for _, p := range bufs {
			if _, err := c.WriteToUDPAddrPort(p, dst); err != nil {
				return err
			}
		}
		return nil
	}
	mp := b.msgs.Get().(*[]ipv6.Message)
	defer b.msgs.Put(mp)
	ua := net.UDPAddrFromAddrPort(dst)
	for len(bufs) > 0 {
		msgs := (*mp)[:min(len(bufs), len(*mp))]
		for i := range msgs {
			msgs[i].Buffers[0], msgs[i].Addr, msgs[i].N = bufs[i], ua, 0
		}
		n, err := bc.WriteBatch(msgs, 0)
		for i := range msgs {
			msgs[i].Buffers[0], msgs[i].Addr = nil, nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return &net.OpError{Op: "write", Net: "udp", Addr: ua, Err: syscall.EAGAIN}
		}
		bufs = bufs[n:]
	}
	return nil
}

// Close closes the sockets; the ReceiveFuncs then return net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, c := range []*net.UDPConn{b.v4, b.v6} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	b.v4, b.v6, b.pc4, b.pc6 = nil, nil, nil, nil
	return errors.Join(errs...)
}

var _ conn.Bind = (*Bind)(nil)
