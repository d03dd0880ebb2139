package socksserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tunsocks/tunsocks/stun"
)

// natConn is the outbound side of a UDP association that emulates a NAT
// (Config.Emulate): one socket per mapping key, and a filter per socket
// that admits only sources it has sent to. It is a net.PacketConn for the
// association's pumps: WriteTo picks (or opens) the socket of the
// destination's mapping, ReadFrom returns what any socket's filter let in.
type natConn struct {
	ctx       context.Context
	pl        PacketListener
	mapping   stun.Behaviour
	filtering stun.Behaviour

	mu       sync.Mutex
	spare    net.PacketConn // the association's first socket, until a mapping takes it
	mappings map[string]*natMapping
	closed   bool

	in   chan natDatagram
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// natMapping is one outbound socket and the peers it has sent to.
type natMapping struct {
	pc   net.PacketConn
	mu   sync.Mutex
	sent map[string]bool // filter keys
}

type natDatagram struct {
	b    []byte
	from net.Addr
}

// maxNATMappings bounds the sockets of one association; past it datagrams
// to new mapping keys are dropped.
const (
	maxNATMappings = 64
	maxNATPeers    = 1024
)

func newNATConn(ctx context.Context, pl PacketListener, first net.PacketConn, mapping, filtering stun.Behaviour) *natConn {
	return &natConn{
		ctx: ctx, pl: pl, mapping: mapping, filtering: filtering,
		spare:    first,
		mappings: map[string]*natMapping{},
		in:       make(chan natDatagram, 64),
		done:     make(chan struct{}),
	}
}

// key returns the part of ap a behaviour depends on.
func natKey(b stun.Behaviour, ap netip.AddrPort) string {
	switch b {
	case stun.AddressDependent:
		return ap.Addr().String()
	case stun.AddressPortDependent:
		return ap.String()
	}
	return ""
}

func (n *natConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	dst := addrPortOf(addr)
	m, err := n.mappingFor(dst)
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	if len(m.sent) >= maxNATPeers {
		clear(m.sent)
	}
	m.sent[natKey(n.filtering, dst)] = true
	m.mu.Unlock()
	return m.pc.WriteTo(p, addr)
}

func (n *natConn) mappingFor(dst netip.AddrPort) (*natMapping, error) {
	key := natKey(n.mapping, dst)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, net.ErrClosed
	}
	if m := n.mappings[key]; m != nil {
		return m, nil
	}
	if len(n.mappings) >= maxNATMappings {
		return nil, fmt.Errorf("emulated NAT: more than %d mappings in one association", maxNATMappings)
	}
	pc := n.spare
	n.spare = nil
	if pc == nil {
		var err error
		if pc, err = n.pl.ListenPacket(n.ctx, "udp", ":0"); err != nil {
			return nil, err
		}
	}
	m := &natMapping{pc: pc, sent: map[string]bool{}}
	n.mappings[key] = m
	n.wg.Add(1)
	go n.read(m)
	return m, nil
}

// read passes what m's filter admits to ReadFrom.
func (n *natConn) read(m *natMapping) {
	defer n.wg.Done()
	buf := make([]byte, 65535)
	for {
		k, from, err := m.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error for one datagram
		}
		m.mu.Lock()
		ok := n.filtering <= stun.EndpointIndependent || m.sent[natKey(n.filtering, addrPortOf(from))]
		m.mu.Unlock()
		if !ok {
			continue
		}
		select {
		case n.in <- natDatagram{b: append([]byte(nil), buf[:k]...), from: from}:
		case <-n.done:
			return
		}
	}
}

func (n *natConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case d := <-n.in:
		return copy(p, d.b), d.from, nil
	case <-n.done:
		return 0, nil, net.ErrClosed
	}
}

func (n *natConn) Close() error {
	n.once.Do(func() {
		n.mu.Lock()
		n.closed = true
		if n.spare != nil {
			n.spare.Close()
		}
		for _, m := range n.mappings {
			m.pc.Close()
		}
		n.mu.Unlock()
		close(n.done)
	})
	n.wg.Wait()
	return nil
}

func (n *natConn) LocalAddr() net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.spare != nil {
		return n.spare.LocalAddr()
	}
	for _, m := range n.mappings {
		return m.pc.LocalAddr()
	}
	return &net.UDPAddr{}
}

func (n *natConn) SetDeadline(time.Time) error      { return nil }
func (n *natConn) SetReadDeadline(time.Time) error  { return nil }
func (n *natConn) SetWriteDeadline(time.Time) error { return nil }
