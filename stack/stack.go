// Package stack owns the userspace gVisor netstack that turns the packets of
// a TUN device back into TCP connections and UDP flows, and hands each one to
// a Handler. No gVisor type appears in its API.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Device is the batched packet device the stack reads from and writes to
// (tun.Device and tuntest.Device satisfy it). Packets are raw IPv4/IPv6.
// The stack always passes an offset of 16 bytes (the Linux TUN needs >= 10
// for its virtio header) and len(sizes) == len(bufs) == BatchSize().
// New takes ownership: Stack.Close closes the device, which must make a
// blocked Read return (os.ErrClosed or net.ErrClosed).
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	MTU() (int, error)
	Close() error
}

// GSODevice is implemented by a Device that also accepts TCP segments
// longer than the MTU, each preceded by a Linux virtio_net_hdr (tun.Device
// on Linux when opened with IFF_VNET_HDR). GSOMaxSize is the largest IP
// packet it takes, 0 if it cannot take any; WriteGSO writes one packet, b
// being the 10-byte header followed by the IP packet.
type GSODevice interface {
	GSOMaxSize() int
	WriteGSO(b []byte) error
}

// Handler receives the flows the stack terminates. Both methods run on a
// goroutine of their own; the context is cancelled when the stack closes.
type Handler interface {
	// HandleTCP runs before the app's handshake completes; it must call
	// exactly one of r.Accept (complete the handshake) or r.Reject (RST).
	// If it returns without doing either, the stack rejects the request.
	HandleTCP(ctx context.Context, r *TCPRequest)
	// HandleUDP runs once per new flow: one flow per app source
	// address:port, whatever the destinations (full cone).
	HandleUDP(ctx context.Context, f *UDPFlow)
}

// TCPOptions tune the netstack's TCP. Zero values take the defaults below.
type TCPOptions struct {
	// SACK enables selective acknowledgements. Default on (set
	// DisableSACK to turn it off): loss between app and stack is rare, but
	// when the device queue drops a burst, SACK recovers it in one round
	// trip instead of go-back-N.
	DisableSACK bool
	// ModerateReceiveBuffer lets each connection grow its receive buffer
	// with the observed throughput (Linux tcp_moderate_rcvbuf) up to
	// RecvBuf instead of starting at the maximum, so thousands of idle
	// connections cost little memory. Default on; DisableModerateReceiveBuffer
	// turns it off.
	DisableModerateReceiveBuffer bool
	// SendBuf and RecvBuf are the per-connection maxima in bytes. The app
	// is one hop away (RTT in microseconds), so these do not need to cover
	// an internet bandwidth-delay product; they absorb the mismatch between
	// a fast app and a slower upstream. Default 4 MiB each.
	SendBuf, RecvBuf int
	// CongestionControl is "cubic" (default, what Linux uses) or "reno".
	CongestionControl string
	// KeepAliveIdle, when > 0, enables keepalives on every accepted
	// connection after this much idle time; probes go every
	// KeepAliveInterval (default 15s), and the connection is dropped after
	// KeepAliveCount (default 4) unanswered probes. Default off: the app
	// lives on this host and tells us when it goes away.
	KeepAliveIdle     time.Duration
	KeepAliveInterval time.Duration
	KeepAliveCount    int
	// DisableGSO keeps TCP segments toward the app at the MTU even when
	// the device takes segmentation-offloaded packets (see GSODevice).
	// For comparisons and for kernels that misbehave; default off.
	DisableGSO bool
	// MaxInFlight bounds handshakes waiting for the Handler's decision;
	// SYNs beyond it are ignored (the app retransmits). Default 1024.
	MaxInFlight int
}

// Config configures New.
type Config struct {
	// Device is required; New takes ownership of it.
	Device Device
	// MTU of the link; 0 asks the device. Must be 1280..65535 (IPv6
	// needs 1280).
	MTU int
	// Handler is required.
	Handler Handler
	// Logger; nil discards.
	Logger *slog.Logger
	TCP    TCPOptions
	// UDPIdle closes a UDP flow that has seen no datagram either way for
	// this long. Default 60s.
	UDPIdle time.Duration
	// UDPQueue is how many datagrams per flow wait for the Handler's
	// ReadFrom; more are dropped and counted. Default 256.
	UDPQueue int
	// TxQueue is how many outbound packets wait for the device writer;
	// more are dropped and counted. Default 4096.
	TxQueue int
	// SystemTCP, when set, has the host kernel terminate the app's TCP
	// connections instead of gVisor (see SystemTCP). UDP and ICMP are
	// unchanged.
	SystemTCP *SystemTCP
	// CloseTimeout bounds how long Close waits for handler goroutines to
	// return after their flows were closed and their context cancelled.
	// Default 5s.
	CloseTimeout time.Duration
}

// Defaults.
const (
	DefaultBufSize      = 4 << 20
	DefaultUDPIdle      = 60 * time.Second
	DefaultUDPQueue     = 256
	DefaultTxQueue      = 4096
	DefaultMaxInFlight  = 1024
	DefaultCloseTimeout = 5 * time.Second
)

const nicID tcpip.NICID = 1

// Stack is a running netstack bound to a device.
type Stack struct {
	gs      *gstack.Stack
	link    *linkEndpoint
	dev     Device
	handler Handler
	log     *slog.Logger
	cfg     Config

	ctx    context.Context // parent of every handler context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	tcpConns map[*tcpConn]struct{}
	sysConns map[*sysConn]struct{}
	udpFlows map[flowKey]*UDPFlow

	sys *sysTCP // nil unless Config.SystemTCP

	handlers sync.WaitGroup // handler goroutines

	closeOnce sync.Once
	closeErr  error

	tcpOpen, udpOpen                atomic.Int64
	tcpTotal, udpTotal, tcpRejected atomic.Uint64
	bytesUp, bytesDown              atomic.Uint64
	udpDrops, udpBadChecksum        atomic.Uint64
	udpSendErrors, handlerUndecided atomic.Uint64
}

// Stats is a snapshot of the stack's counters.
type Stats struct {
	TCPOpen, UDPOpen   int64  // flows open now
	TCPTotal, UDPTotal uint64 // flows handed to the Handler so far
	TCPRejected        uint64
	// BytesUp and BytesDown are the payload read from and written to
	// the flows' Conns. In system TCP mode a relay that splices on the
	// kernel socket (KernelConn) bypasses them.
	BytesUp            uint64 // payload app -> handler (TCP and UDP)
	BytesDown          uint64 // payload handler -> app
	UDPDrops           uint64 // datagrams dropped because a flow's queue was full
	PacketsIn          uint64 // packets read from the device
	PacketsOut         uint64 // packets written to the device
	TxDrops            uint64 // outbound packets dropped: device queue full
	RxErrors, TxErrors uint64 // device read/write errors
}

// New builds the netstack on cfg.Device and starts its packet loops. ctx is
// the parent of every handler's context; cancelling it does not close the
// stack (Close does).
func New(ctx context.Context, cfg Config) (*Stack, error) {
	if cfg.Device == nil {
		return nil, errors.New("stack: Config.Device is nil")
	}
	if cfg.Handler == nil {
		return nil, errors.New("stack: Config.Handler is nil")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	devMTU, err := cfg.Device.MTU()
	if err != nil || devMTU <= 0 {
		devMTU = cfg.MTU
	}
	// Read buffers hold the larger of our MTU and the device's: a device
	// configured bigger than we were told must not make reads fail.
	readBufSize := min(max(cfg.MTU, devMTU), 65535)

	gs := gstack.New(gstack.Options{
		NetworkProtocols: []gstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{
			tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
		},
	})
	if err := setTCPOptions(gs, cfg.TCP); err != nil {
		gs.Destroy()
		return nil, err
	}

	sctx, cancel := context.WithCancel(ctx)
	s := &Stack{
		gs:       gs,
		dev:      cfg.Device,
		handler:  cfg.Handler,
		log:      log,
		cfg:      cfg,
		ctx:      sctx,
		cancel:   cancel,
		tcpConns: make(map[*tcpConn]struct{}),
		sysConns: make(map[*sysConn]struct{}),
		udpFlows: make(map[flowKey]*UDPFlow),
	}
	var divert func([]byte) (bool, bool)
	if cfg.SystemTCP != nil {
		if s.sys, err = newSysTCP(s, *cfg.SystemTCP); err != nil {
			// As when the self-test fails: say so, and TCP goes through
			// gVisor.
			log.Warn("system TCP unavailable; TCP goes through gVisor instead", "err", err)
			s.sys = nil
		} else {
			divert = s.sys.divert
		}
	}
	s.link = newLinkEndpoint(cfg.Device, uint32(cfg.MTU), readBufSize, cfg.TxQueue, !cfg.TCP.DisableGSO, divert, log)

	fail := func(what string, terr tcpip.Error) (*Stack, error) {
		cancel()
		if s.sys != nil {
			s.sys.close()
		}
		s.link.Close()
		_ = cfg.Device.Close()
		s.link.Wait()
		gs.Destroy()
		return nil, fmt.Errorf("stack: %s: %w", what, convertError(terr))
	}
	if terr := gs.CreateNICWithOptions(nicID, s.link, gstack.NICOptions{Name: "tun"}); terr != nil {
		return fail("create NIC", terr)
	}
	// Promiscuous: accept packets for every destination address, not just
	// addresses assigned to the NIC (we own none; the app talks to the
	// whole internet). Spoofing: send from any source address, so replies
	// leave with the remote's address as their source.
	if terr := gs.SetPromiscuousMode(nicID, true); terr != nil {
		return fail("promiscuous mode", terr)
	}
	if terr := gs.SetSpoofing(nicID, true); terr != nil {
		return fail("spoofing", terr)
	}
	gs.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})

	fwd := tcp.NewForwarder(gs, 0, cfg.TCP.MaxInFlight, s.forwardTCP)
	gs.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	gs.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDPPacket)
	gs.SetTransportProtocolHandler(icmp.ProtocolNumber4, s.handleICMPv4)

	s.link.start()
	if s.sys != nil {
		s.sys.selfTest()
	}
	log.Debug("stack started", "mtu", cfg.MTU, "batch", s.link.batch, "sack", !cfg.TCP.DisableSACK,
		"cc", cfg.TCP.CongestionControl, "sendbuf", cfg.TCP.SendBuf, "recvbuf", cfg.TCP.RecvBuf)
	return s, nil
}

func withDefaults(cfg Config) (Config, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MTU == 0 {
		m, err := cfg.Device.MTU()
		if err != nil {
			return cfg, fmt.Errorf("stack: device MTU: %w", err)
		}
		cfg.MTU = m
	}
	if cfg.MTU < header.IPv6MinimumMTU || cfg.MTU > 65535 {
		return cfg, fmt.Errorf("stack: MTU %d out of range %d..65535", cfg.MTU, header.IPv6MinimumMTU)
	}
	t := &cfg.TCP
	if t.SendBuf == 0 {
		t.SendBuf = DefaultBufSize
	}
	if t.RecvBuf == 0 {
		t.RecvBuf = DefaultBufSize
	}
	if t.SendBuf < tcp.MinBufferSize || t.RecvBuf < tcp.MinBufferSize || t.SendBuf > 1<<30 || t.RecvBuf > 1<<30 {
		return cfg, fmt.Errorf("stack: TCP buffers must be %d..%d bytes (send %d, receive %d)",
			tcp.MinBufferSize, 1<<30, t.SendBuf, t.RecvBuf)
	}
	switch t.CongestionControl {
	case "":
		t.CongestionControl = "cubic"
	case "cubic", "reno":
	default:
		return cfg, fmt.Errorf("stack: unknown congestion control %q (want cubic or reno)", t.CongestionControl)
	}
	if t.KeepAliveIdle < 0 || t.KeepAliveInterval < 0 || t.KeepAliveCount < 0 {
		return cfg, errors.New("stack: negative keepalive setting")
	}
	if t.KeepAliveInterval == 0 {
		t.KeepAliveInterval = 15 * time.Second
	}
	if t.KeepAliveCount == 0 {
		t.KeepAliveCount = 4
	}
	if t.MaxInFlight == 0 {
		t.MaxInFlight = DefaultMaxInFlight
	}
	if t.MaxInFlight < 0 {
		return cfg, fmt.Errorf("stack: MaxInFlight %d < 0", t.MaxInFlight)
	}
	if cfg.UDPIdle == 0 {
		cfg.UDPIdle = DefaultUDPIdle
	}
	if cfg.UDPQueue == 0 {
		cfg.UDPQueue = DefaultUDPQueue
	}
	if cfg.TxQueue == 0 {
		cfg.TxQueue = DefaultTxQueue
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if cfg.UDPIdle < 0 || cfg.UDPQueue < 0 || cfg.TxQueue < 0 || cfg.CloseTimeout < 0 {
		return cfg, errors.New("stack: negative UDPIdle, UDPQueue, TxQueue or CloseTimeout")
	}
	return cfg, nil
}

func setTCPOptions(gs *gstack.Stack, o TCPOptions) error {
	sack := tcpip.TCPSACKEnabled(!o.DisableSACK)
	moderate := tcpip.TCPModerateReceiveBufferOption(!o.DisableModerateReceiveBuffer)
	// Start every connection at gVisor's 1 MiB default (or the maximum,
	// if smaller) and let moderation grow the receive side toward the max.
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultSendBufferSize, o.SendBuf), Max: o.SendBuf}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultReceiveBufferSize, o.RecvBuf), Max: o.RecvBuf}
	cc := tcpip.CongestionControlOption(o.CongestionControl)
	// TIME-WAIT guards against old segments of a previous connection
	// arriving late; between the app and this stack there is one local
	// device and no reordering, so 60 s of TIME-WAIT only piles up
	// endpoints under a high connection rate.
	tw := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	reuse := tcpip.TCPTimeWaitReuseOption(tcpip.TCPTimeWaitReuseGlobal)
	// RACK walks the whole retransmit queue on every ACK; with multi-MiB
	// send buffers toward an app one local hop away (no loss, no
	// reordering) that walk was the stack's top cost on downloads.
	// Loss recovery falls back to duplicate-ACK counting (and SACK).
	rec := tcpip.TCPRecovery(0)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &snd, &rcv, &cc, &tw, &reuse, &rec} {
		if terr := gs.SetTransportProtocolOption(tcp.ProtocolNumber, opt); terr != nil {
			return fmt.Errorf("stack: TCP option %T: %w", opt, convertError(terr))
		}
	}
	return nil
}

// Stats returns the counters. Safe to call at any time, also after Close.
func (s *Stack) Stats() Stats {
	return Stats{
		TCPOpen:     s.tcpOpen.Load(),
		UDPOpen:     s.udpOpen.Load(),
		TCPTotal:    s.tcpTotal.Load(),
		UDPTotal:    s.udpTotal.Load(),
		TCPRejected: s.tcpRejected.Load(),
		BytesUp:     s.bytesUp.Load(),
		BytesDown:   s.bytesDown.Load(),
		UDPDrops:    s.udpDrops.Load(),
		PacketsIn:   s.link.pktsIn.Load(),
		PacketsOut:  s.link.pktsOut.Load(),
		TxDrops:     s.link.txDrops.Load(),
		RxErrors:    s.link.rxErrors.Load(),
		TxErrors:    s.link.txErrors.Load(),
	}
}

// SystemTCP reports whether the kernel terminates the app's TCP: the
// stack was configured with SystemTCP and its self-test passed.
func (s *Stack) SystemTCP() bool { return s.sys != nil && !s.sys.off.Load() }

// Failed is closed when the stack stops moving packets on its own: the
// device was closed or its interface deleted under the stack, or reads
// keep failing. Flows cannot work any more; the caller should report Err
// and Close the stack. It is never closed by Close.
func (s *Stack) Failed() <-chan struct{} { return s.link.failed }

// Err says why Failed was closed; nil before that.
func (s *Stack) Err() error {
	select {
	case <-s.link.failed:
		return fmt.Errorf("stack: %w", s.link.failErr)
	default:
		return nil
	}
}

// Close stops the stack: no new flows, every open flow closed, handler
// contexts cancelled, the device closed, packet loops and gVisor's workers
// stopped. It waits up to Config.CloseTimeout for handler goroutines to
// return and reports the ones that did not. Idempotent.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Stack) close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]interface{ Close() error }, 0, len(s.tcpConns)+len(s.sysConns))
	for c := range s.tcpConns {
		conns = append(conns, c)
	}
	for c := range s.sysConns {
		conns = append(conns, c)
	}
	flows := make([]*UDPFlow, 0, len(s.udpFlows))
	for _, f := range s.udpFlows {
		flows = append(flows, f)
	}
	s.mu.Unlock()

	s.cancel()
	for _, c := range conns {
		_ = c.Close()
	}
	for _, f := range flows {
		f.closeWith(errStackClosed)
	}

	if s.sys != nil {
		s.sys.close()
	}
	s.link.closing.Store(true)
	devErr := s.dev.Close()
	if devErr != nil {
		devErr = fmt.Errorf("stack: close device: %w", devErr)
	}
	// Stop our packet loops first: gVisor's Destroy waits for the link
	// endpoint's goroutines before it runs the NIC's close action.
	s.link.Close()
	s.link.Wait()
	// Abort remaining endpoints (pending handshakes included), stop
	// gVisor's workers, remove the NIC.
	s.gs.Destroy()

	done := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(done)
	}()
	t := time.NewTimer(s.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-done:
		return devErr
	case <-t.C:
		return errors.Join(devErr, fmt.Errorf("stack: handlers still running %v after close", s.cfg.CloseTimeout))
	}
}

// goHandler starts fn as a tracked handler goroutine; false when closing.
// Must be called with s.mu held.
func (s *Stack) goHandlerLocked(fn func()) bool {
	if s.closed {
		return false
	}
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		fn()
	}()
	return true
}
