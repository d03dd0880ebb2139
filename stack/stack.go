// Package stack owns the userspace gVisor netstack that turns the packets of
// a TUN device back into TCP connections and UDP flows, and hands each one to
// a Handler. No gVisor type appears in its API.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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

// ErrPacketsLost is what a Device's Read wraps (errors.Is) when some packets
// of that read were lost but the device is fine, e.g. wireguard-go's
// tun.ErrTooManySegments: a segmentation-offloaded packet split into more
// segments than there were buffers ("this error should not cause reads to
// cease"). The n packets Read reports are still valid. The stack counts the
// loss (Stats.RxLost) and reads on at once; any other error is treated as
// trouble with the device itself.
var ErrPacketsLost = errors.New("stack: device lost packets of a read")

// ReadInterrupter is implemented by a Device whose blocked Read can be
// woken without closing it (the Linux TUN: a read deadline in the past).
// InterruptRead makes the Read blocked now, or else the next one, return
// 0 packets and an error wrapping os.ErrDeadlineExceeded; no packet is
// read or lost, and later Reads block again. The stack calls it from
// ReleaseBuffers: the device reader's batch buffers (up to 8 MiB in
// system TCP mode) are touched only by the reader, and an idle reader
// sits in Read, so only a reader woken this way can hand their pages
// back. An error means the device cannot be interrupted (a blocking
// descriptor); the reader's buffers then stay.
type ReadInterrupter interface {
	InterruptRead() error
}

// WaitCountingDevice is implemented by a Device that can count its
// reads that found no packet and waited for one (the Linux TUN with a
// virtio header). ReadWaits returns the count so far; ok is false when
// the device cannot tell. The reader then hands the packets of a batch
// to gVisor's TCP processors without waking an idle processor of the
// runtime for them (handoff.Hold): the reader is about to wait in its
// next read, and the processor's goroutine runs on its thread then, two
// context switches fewer per packet of a request/response exchange; a
// lone packet whose read waited has it run before that read
// (handoff.Yield). When the next read did not wait after all, the reader
// wakes one then (handoff.Wake).
type WaitCountingDevice interface {
	ReadWaits() (n uint64, ok bool)
}

// ValidatingDevice is implemented by a Device that knows, per packet, whether
// the kernel validated or computed its checksums (the Linux TUN with
// IFF_VNET_HDR: its virtio-net header says so for packets of a GSO batch,
// packets with a partial checksum and packets the receiving NIC validated).
// ReadValidated is Read that also sets valid[i] for each packet returned
// (len(valid) == len(bufs)): true when the IPv4 header checksum and the TCP
// or UDP checksum are known to be correct. The stack verifies the checksums
// of every other TCP and UDP packet itself and drops bad ones
// (Stats.BadChecksums); from a Device without this method that is every
// packet.
type ValidatingDevice interface {
	ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error)
}

// WholeSegmentDevice is implemented by a Device that can hand the stack a
// TCP segment longer than the MTU unsplit (tun.Device on Linux with
// IFF_VNET_HDR: the segments the app's TCP left for the device to split,
// TSO). ReadWhole makes one read into big (len(big) >= WholeReadSize()).
// Such a segment comes back as big[start:end] (n == 0), an IP packet whose
// checksums are to be taken as valid: the host built it from its own
// memory. Every other read comes back as ReadValidated returns it, in bufs
// (start == end == 0). The stack uses it when it neither diverts packets
// (system TCP) nor records them (Config.Tap): one large segment costs the
// netstack one packet's work, where its split segments cost a copy, a
// checksum and a GRO merge each.
type WholeSegmentDevice interface {
	WholeReadSize() int
	ReadWhole(big []byte, bufs [][]byte, sizes []int, valid []bool, offset int) (n, start, end int, err error)
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

// GSOVectorDevice is a GSODevice that can also write a packet from
// pieces: WriteGSOVec writes the concatenation of bufs as WriteGSO writes
// b (one writev). The stack then hands its segments' buffers over as
// they are instead of copying each segment together first.
type GSOVectorDevice interface {
	WriteGSOVec(bufs [][]byte) error
}

// Handler receives the flows the stack terminates. Both methods run on a
// goroutine of their own; the context is cancelled when the stack closes.
type Handler interface {
	// HandleTCP runs before the app's handshake completes; it must call
	// exactly one of r.Accept (complete the handshake) or r.Reject (RST).
	// If it returns without doing either, the stack rejects the request.
	// It may return before the flow it serves ends after r.Detach.
	HandleTCP(ctx context.Context, r *TCPRequest)
	// HandleUDP runs once per new flow: one flow per app source
	// address:port, whatever the destinations (full cone).
	HandleUDP(ctx context.Context, f *UDPFlow)
}

// TCPOptions tune the netstack's TCP. Zero values take the defaults below.
// MaxInFlight, MaxInFlightPerSource and HandshakeTimeout apply to both TCP
// stacks (gVisor and SystemTCP).
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
	// CongestionControl is "cubic" (default) or "reno"; see
	// setTCPOptions for why cubic.
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
	// AckDelay is how long a pure ACK of the netstack's TCP toward the
	// app may wait for a reply that carries the same acknowledgement, as
	// Linux and lwIP delay theirs (see ackDelayer): a round trip then
	// costs one packet each way instead of three. Only acknowledgements
	// of less than a full segment of new data wait; duplicates, window
	// updates and SACKs never do. Default DefaultAckDelay; negative: no
	// delay.
	AckDelay time.Duration
	// KeepTimestamps lets the app's TCP and the netstack's use the
	// timestamp option (RFC 7323) when the app offers it. By default the
	// option is taken out of the app's SYN before gVisor sees it, so
	// neither side stamps its segments: between the app and this stack
	// they buy nothing, and cost every packet a clock read and an option
	// each way (see stripSYNTimestamp). Not in system TCP mode, where the
	// kernel terminates the app's TCP.
	KeepTimestamps bool
	// MaxInFlight bounds the app's connection attempts in flight: SYNs
	// held while the Handler decides, and accepted attempts whose app has
	// not completed its handshake yet. At the bound the OLDEST attempt is
	// shed to admit the new one (a deciding one is dropped silently and
	// its Handler's context cancelled; an accepting one has its handshake
	// aborted), so SYNs that are never completed (spoofed sources) cannot
	// lock new connections out. Default 1024 (DefaultMaxInFlight).
	MaxInFlight int
	// MaxInFlightPerSource is the same bound per app source address (one
	// device behind a gateway); at it, that source's oldest attempt is
	// shed. Default 512 (DefaultMaxInFlightPerSource), at most
	// MaxInFlight.
	MaxInFlightPerSource int
	// HandshakeTimeout bounds how long Accept waits for the app to
	// complete its handshake. The app is one hop away; a handshake still
	// open after this is not coming (a spoofed SYN, an app that gave up),
	// and the Handler learns it from Accept's error and closes the
	// upstream connection it dialed. Default 5s (DefaultHandshakeTimeout);
	// gVisor resends its SYN-ACK after 1 s and 3 s within it.
	HandshakeTimeout time.Duration
}

// PacketTap records packets (tun.Pcap satisfies it). WritePacket must not
// keep pkt after it returns; its error is ignored (the tap reports it
// itself, e.g. on Close).
type PacketTap interface {
	WritePacket(t time.Time, pkt []byte) error
}

// Config configures New.
type Config struct {
	// Device is required; New takes ownership of it.
	Device Device
	// MTU of the link; 0 asks the device. Must be MinMTU..65535; IPv6
	// needs at least 1280 (MinMTU6): below that the stack carries IPv4
	// only, and the device should have no IPv6 address.
	MTU int
	// Handler is required.
	Handler Handler
	// Logger; nil discards.
	Logger *slog.Logger
	TCP    TCPOptions
	// UDPQueue is how many datagrams per flow wait for the Handler's
	// ReadFrom; more are dropped and counted (UDPDrops). Default 256.
	UDPQueue int
	// UDPQueueBytes bounds the payload bytes waiting in all flows' queues
	// together; more datagrams are dropped and counted (UDPDrops).
	// Default 16 MiB (DefaultUDPQueueBytes).
	UDPQueueBytes int
	// MaxUDPFlows bounds the UDP flows open at once (a flow is one app
	// source address:port), and MaxUDPFlowsPerSource the flows of one app
	// source address. A datagram that would open a flow beyond either
	// bound first closes the least recently active flow (of that source,
	// or of all; counted in UDPEvicted), whose Handler then sees ReadFrom
	// fail with net.ErrClosed. Defaults 2048 and 512
	// (DefaultMaxUDPFlows, DefaultMaxUDPFlowsPerSource); the per-source
	// bound is at most MaxUDPFlows. Most flows are short (a DNS query is
	// one), so evicting the least recently active is mostly evicting the
	// finished; each open flow costs the Handler an upstream socket or
	// two (a SOCKS UDP association is a TCP and a UDP socket).
	MaxUDPFlows, MaxUDPFlowsPerSource int
	// NewUDPFlowRate bounds how many flows a second the app's datagrams
	// may open, and NewUDPFlowRatePerSource how many one app source
	// address may (each with a burst of a second's worth). A datagram
	// that would open a flow beyond either is dropped and counted
	// (UDPRateLimited); flows already open are not affected. Every new
	// flow costs the Handler an upstream association, so a flood of new
	// source ports must not take the CPU and the upstream that TCP and the
	// other flows need. Defaults 1000 and 250 (DefaultNewUDPFlowRate,
	// DefaultNewUDPFlowRatePerSource); the per-source rate is at most the
	// total.
	NewUDPFlowRate, NewUDPFlowRatePerSource int
	// TxQueue is how many outbound packets wait for the device writer;
	// more are dropped and counted. Default 4096.
	TxQueue int
	// SystemTCP, when set, has the host kernel terminate the app's TCP
	// connections instead of gVisor (see SystemTCP). UDP and ICMP are
	// unchanged.
	SystemTCP *SystemTCP
	// Tap, when set, records every packet the app sends into the device
	// and every packet written to it for the app, as a capture on the TUN
	// would show them, except system TCP mode's translated leg (the
	// packets between the kernel listener and its fake peers, which are
	// not the app's traffic). Recording happens on the packet path.
	Tap PacketTap
	// CloseTimeout bounds how long Close waits for handler goroutines to
	// return, and detached flows to end (TCPRequest.Detach), after their
	// flows were closed and their context cancelled. Default 5s.
	CloseTimeout time.Duration
}

// Defaults and limits.
const (
	DefaultBufSize                 = 4 << 20
	DefaultUDPQueue                = 256
	DefaultUDPQueueBytes           = 16 << 20
	DefaultMaxUDPFlows             = 2048
	DefaultMaxUDPFlowsPerSource    = 512
	DefaultNewUDPFlowRate          = 1000
	DefaultNewUDPFlowRatePerSource = 250
	DefaultTxQueue                 = 4096
	DefaultMaxInFlight             = 1024
	DefaultMaxInFlightPerSource    = 512
	DefaultHandshakeTimeout        = 5 * time.Second
	DefaultCloseTimeout            = 5 * time.Second
	// MinMTU is the smallest MTU the stack takes: the datagram size
	// every IPv4 host must accept (RFC 791). MinMTU6 is IPv6's minimum
	// link MTU (RFC 8200); below it gVisor sends no IPv6 at all.
	MinMTU  = 576
	MinMTU6 = header.IPv6MinimumMTU
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
	epoch   time.Time // for clock

	ctx    context.Context // parent of every handler context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	tcpConns map[*tcpConn]struct{}

	hs *handshakes // TCP attempts in flight

	udpMu     sync.Mutex // guards udpFlows, the flows' table links, udpClosed
	udpFlows  udpTable
	udpClosed bool
	udpQueued atomic.Int64 // payload bytes in all flows' queues
	// flowOpened, set by a test (under udpMu), runs after a new UDP flow
	// is registered and before the datagram that opened it is queued.
	flowOpened func()

	sys *sysTCP // nil unless Config.SystemTCP

	handlers sync.WaitGroup // handler goroutines

	closeOnce sync.Once
	closeErr  error

	tcpOpen, udpOpen                         atomic.Int64
	tcpTotal, udpTotal, tcpRejected          atomic.Uint64
	bytesUp, bytesDown                       atomic.Uint64
	udpDrops, udpEvicted, udpRateLimited     atomic.Uint64
	udpSendErrors, handlerUndecided, tcpShed atomic.Uint64
	tcpHandshakeTimeouts                     atomic.Uint64
}

// Stats is a snapshot of the stack's counters. The drop and error counters
// (from TCPShed on) are what an operator watches: each one rising means
// packets or flows the stack refused.
type Stats struct {
	TCPOpen, UDPOpen   int64  // flows open now
	TCPTotal, UDPTotal uint64 // flows handed to the Handler so far
	TCPRejected        uint64
	TCPInFlight        int64 // connection attempts in flight now (MaxInFlight)
	// BytesUp and BytesDown are the payload read from and written to
	// the flows' Conns. In system TCP mode a relay that splices on the
	// kernel socket (KernelConn) bypasses them.
	BytesUp    uint64 // payload app -> handler (TCP and UDP)
	BytesDown  uint64 // payload handler -> app
	PacketsIn  uint64 // packets read from the device
	PacketsOut uint64 // packets written to the device

	// TCPShed counts connection attempts given up to admit newer ones
	// (MaxInFlight, MaxInFlightPerSource); TCPHandshakeTimeouts accepted
	// attempts whose app did not complete its handshake in time
	// (HandshakeTimeout).
	TCPShed, TCPHandshakeTimeouts uint64
	// UDPEvicted counts flows closed to admit newer ones (MaxUDPFlows,
	// MaxUDPFlowsPerSource); UDPRateLimited datagrams dropped because
	// they would have opened a flow beyond NewUDPFlowRate or
	// NewUDPFlowRatePerSource; UDPDrops datagrams dropped because a
	// flow's queue or the queues' byte budget was full, or no flow could
	// be made room for; UDPSendErrors datagrams toward the app that
	// gVisor refused.
	UDPEvicted, UDPRateLimited, UDPDrops, UDPSendErrors uint64
	// BadChecksums counts TCP and UDP packets from the device dropped
	// for a wrong checksum (or a wrong IPv4 header checksum).
	BadChecksums uint64
	// RxDrops counts packets read that were neither IPv4 nor IPv6, or
	// that gVisor found malformed.
	RxDrops uint64
	// RxLost counts reads in which the device lost packets but went on
	// (ErrPacketsLost); RxErrors and TxErrors other device read and
	// write errors; TxDrops outbound packets dropped because the device
	// queue was full.
	RxLost, RxErrors, TxErrors, TxDrops uint64
	// BuffersReleased counts the bytes of the device writer's and
	// reader's buffers handed back to the system (ReleaseBuffers), over
	// all releases.
	BuffersReleased uint64
	// ACKsDelayed counts pure ACKs toward the app held back
	// (TCPOptions.AckDelay); ACKsSpared those of them never written
	// because a later packet of the flow carried the acknowledgement
	// (a reply), the rest went out when the delay ended or just before
	// a packet of their flow that did not cover them.
	ACKsDelayed, ACKsSpared uint64
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
		epoch:    time.Now(),
		ctx:      sctx,
		cancel:   cancel,
		tcpConns: make(map[*tcpConn]struct{}),
		hs:       newHandshakes(cfg.TCP.MaxInFlight, cfg.TCP.MaxInFlightPerSource),
		udpFlows: udpTable{flows: make(map[flowKey]*UDPFlow), bySrc: make(map[netip.Addr]*srcFlows),
			rate: fullBucket(cfg.NewUDPFlowRate, 0)},
	}
	if cfg.SystemTCP != nil {
		if s.sys, err = newSysTCP(sctx, s, *cfg.SystemTCP); err != nil {
			// As when the self-test fails: say so, and TCP goes through
			// gVisor.
			log.Warn("system TCP unavailable; TCP goes through gVisor instead", "err", err)
			s.sys = nil
		}
	}
	s.link = newLinkEndpoint(linkConfig{
		dev: cfg.Device, mtu: uint32(cfg.MTU), readBufSize: readBufSize, queueLen: cfg.TxQueue,
		gso: !cfg.TCP.DisableGSO, sys: s.sys, tap: cfg.Tap, log: log,
		ackDelay: ackDelay(cfg.TCP.AckDelay), stripTS: !cfg.TCP.KeepTimestamps,
	})
	if s.sys != nil {
		s.sys.link = s.link
		s.sys.run()
	}

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
	if terr := gs.CreateNICWithOptions(nicID, s.link, gstack.NICOptions{Name: "tun", QDisc: linkQDisc{s.link}}); terr != nil {
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

	// The forwarder's own bound only backs ours up (see handshakes): it
	// ignores SYNs beyond it, where ours sheds the oldest attempt. Shed
	// attempts leave gVisor's table a moment later (when their
	// CreateEndpoint returns), hence the margin.
	fwd := tcp.NewForwarder(gs, 0, 2*cfg.TCP.MaxInFlight+64, s.forwardTCP)
	gs.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	gs.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDPPacket)
	gs.SetTransportProtocolHandler(icmp.ProtocolNumber4, s.handleICMPv4)

	// Only now: packets already waiting on the device (a TUN brought up
	// before the stack) must meet a finished stack, not race with it.
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
	if cfg.MTU < MinMTU || cfg.MTU > 65535 {
		return cfg, fmt.Errorf("stack: MTU %d out of range %d..65535 (IPv6 needs %d)", cfg.MTU, MinMTU, MinMTU6)
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
	if t.MaxInFlight < 0 || t.MaxInFlightPerSource < 0 || t.HandshakeTimeout < 0 {
		return cfg, fmt.Errorf("stack: negative MaxInFlight %d, MaxInFlightPerSource %d or HandshakeTimeout %v",
			t.MaxInFlight, t.MaxInFlightPerSource, t.HandshakeTimeout)
	}
	if t.MaxInFlight == 0 {
		t.MaxInFlight = DefaultMaxInFlight
	}
	if t.MaxInFlightPerSource == 0 {
		t.MaxInFlightPerSource = DefaultMaxInFlightPerSource
	}
	t.MaxInFlightPerSource = min(t.MaxInFlightPerSource, t.MaxInFlight)
	if t.HandshakeTimeout == 0 {
		t.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.UDPQueue < 0 || cfg.UDPQueueBytes < 0 || cfg.MaxUDPFlows < 0 || cfg.MaxUDPFlowsPerSource < 0 ||
		cfg.NewUDPFlowRate < 0 || cfg.NewUDPFlowRatePerSource < 0 || cfg.TxQueue < 0 || cfg.CloseTimeout < 0 {
		return cfg, errors.New("stack: negative UDPQueue, UDPQueueBytes, MaxUDPFlows, MaxUDPFlowsPerSource, " +
			"NewUDPFlowRate, NewUDPFlowRatePerSource, TxQueue or CloseTimeout")
	}
	if cfg.UDPQueue == 0 {
		cfg.UDPQueue = DefaultUDPQueue
	}
	if cfg.UDPQueueBytes == 0 {
		cfg.UDPQueueBytes = DefaultUDPQueueBytes
	}
	if cfg.MaxUDPFlows == 0 {
		cfg.MaxUDPFlows = DefaultMaxUDPFlows
	}
	if cfg.MaxUDPFlowsPerSource == 0 {
		cfg.MaxUDPFlowsPerSource = DefaultMaxUDPFlowsPerSource
	}
	cfg.MaxUDPFlowsPerSource = min(cfg.MaxUDPFlowsPerSource, cfg.MaxUDPFlows)
	if cfg.NewUDPFlowRate == 0 {
		cfg.NewUDPFlowRate = DefaultNewUDPFlowRate
	}
	if cfg.NewUDPFlowRatePerSource == 0 {
		cfg.NewUDPFlowRatePerSource = DefaultNewUDPFlowRatePerSource
	}
	cfg.NewUDPFlowRatePerSource = min(cfg.NewUDPFlowRatePerSource, cfg.NewUDPFlowRate)
	if cfg.TxQueue == 0 {
		cfg.TxQueue = DefaultTxQueue
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	return cfg, nil
}

// ackDelay resolves TCPOptions.AckDelay.
func ackDelay(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultAckDelay
	case d < 0:
		return 0
	}
	return d
}

// setTCPOptions applies the TCP tuning. Each choice names what it rests on:
// gVisor v0.0.0-20260905035102-160fafc42237 (go.mod), measured with
// scripts/bench.sh on 2026-11-23 unless said otherwise.
func setTCPOptions(gs *gstack.Stack, o TCPOptions) error {
	sack := tcpip.TCPSACKEnabled(!o.DisableSACK)
	moderate := tcpip.TCPModerateReceiveBufferOption(!o.DisableModerateReceiveBuffer)
	// Start every connection at gVisor's 1 MiB default (or the maximum,
	// if smaller) and let moderation grow the receive side toward the max.
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultSendBufferSize, o.SendBuf), Max: o.SendBuf}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcp.DefaultReceiveBufferSize, o.RecvBuf), Max: o.RecvBuf}
	// Cubic by default, as Linux. https://github.com/google/gvisor/issues/11632
	// reports an int overflow in the sender's congestion-window
	// arithmetic, more likely to trigger with cubic (tailscale runs reno
	// for it). The pinned gVisor computes cubic's window in float64 and
	// bounds its target per RFC 9438 section 4.2 (transport/tcp/cubic.go),
	// and the e2e suite's 256 MiB transfers each way and scripts/bench.sh
	// showed no collapse on 2026-11-23; --tcp-cc reno is the way out if
	// one appears.
	cc := tcpip.CongestionControlOption(o.CongestionControl)
	// TIME-WAIT guards against old segments of a previous connection
	// arriving late; between the app and this stack there is one local
	// device and no reordering, so 60 s of TIME-WAIT only piles up
	// endpoints under a high connection rate.
	tw := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	reuse := tcpip.TCPTimeWaitReuseOption(tcpip.TCPTimeWaitReuseGlobal)
	// RACK walks the whole retransmit queue on every ACK; with multi-MiB
	// send buffers toward an app one local hop away (no loss, no
	// reordering) that walk was the stack's top cost on downloads (go
	// tool pprof under scripts/bench.sh, 2026-11-23). Loss recovery falls
	// back to duplicate-ACK counting (and SACK). tailscale turns RACK off
	// in its netstack too.
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
	gst := s.gs.Stats()
	st := Stats{
		TCPOpen:              s.tcpOpen.Load(),
		UDPOpen:              s.udpOpen.Load(),
		TCPTotal:             s.tcpTotal.Load(),
		UDPTotal:             s.udpTotal.Load(),
		TCPRejected:          s.tcpRejected.Load(),
		TCPInFlight:          int64(s.hs.len()),
		BytesUp:              s.bytesUp.Load(),
		BytesDown:            s.bytesDown.Load(),
		PacketsIn:            s.link.pktsIn.Load(),
		PacketsOut:           s.link.pktsOut.Load(),
		TCPShed:              s.tcpShed.Load(),
		TCPHandshakeTimeouts: s.tcpHandshakeTimeouts.Load(),
		UDPEvicted:           s.udpEvicted.Load(),
		UDPRateLimited:       s.udpRateLimited.Load(),
		UDPDrops:             s.udpDrops.Load(),
		UDPSendErrors:        s.udpSendErrors.Load(),
		BadChecksums:         s.link.badChecksums.Load(),
		RxDrops:              s.link.rxDrops.Load() + gst.IP.MalformedPacketsReceived.Value(),
		RxLost:               s.link.rxLost.Load(),
		RxErrors:             s.link.rxErrors.Load(),
		TxErrors:             s.link.txErrors.Load(),
		TxDrops:              s.link.txDrops.Load(),
		BuffersReleased:      s.link.released.Load(),
	}
	if d := s.link.acks; d != nil {
		st.ACKsDelayed, st.ACKsSpared = d.delayed.Load(), d.spared.Load()
	}
	return st
}

// SystemTCP reports whether the kernel terminates the app's TCP, of
// either family: the stack was configured with SystemTCP and the
// self-test of at least one family passed (SystemTCPFamilies says which).
func (s *Stack) SystemTCP() bool {
	v4, v6 := s.SystemTCPFamilies()
	return v4 || v6
}

// SystemTCPFamilies reports, for IPv4 and for IPv6, whether the kernel
// terminates the app's TCP of that family: SystemTCP gave the stack an
// address of the family and the family's self-test passed. A family
// whose test failed (a firewall dropping its new inbound TCP on the TUN)
// has its TCP terminated by gVisor.
func (s *Stack) SystemTCPFamilies() (v4, v6 bool) {
	if s.sys == nil {
		return false, false
	}
	for _, f := range s.sys.fams {
		on := !f.off.Load()
		if f.self.Is4() {
			v4 = on
		} else {
			v6 = on
		}
	}
	return v4, v6
}

// Failed is closed when the stack stops moving packets on its own: the
// device was closed or its interface deleted under the stack, or reads
// keep failing. Flows cannot work any more; the caller should report Err
// and Close the stack. It is never closed by Close.
func (s *Stack) Failed() <-chan struct{} { return s.link.failed }

// ReleaseBuffers hands the pages of the device writer's buffers back to
// the system, once it is between batches, and, when the device is a
// ReadInterrupter, those of the device reader's buffers, once it is
// between reads. A burst leaves up to 8 MiB of each resident, though the
// loops keep only their capacity between batches; call it when traffic
// has gone quiet (memtrim's trims).
func (s *Stack) ReleaseBuffers() { s.link.releaseBuffers() }

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
	conns := make([]*tcpConn, 0, len(s.tcpConns))
	for c := range s.tcpConns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	s.cancel()
	// Handshakes under way end now, not at their timeout (Accept aborts
	// the ones that start after this, seeing closed).
	for _, r := range s.hs.accepting() {
		r.abortHandshake(errStackClosed)
	}
	for _, c := range conns {
		_ = c.Close()
		s.mu.Lock()
		stop := c.stop
		c.stop = nil
		s.mu.Unlock()
		if stop != nil {
			stop()
		}
	}
	s.udpMu.Lock()
	s.udpClosed = true
	for _, f := range s.udpFlows.flows {
		f.closeLocked(errStackClosed)
	}
	s.udpMu.Unlock()

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

// goHandlerLocked starts fn as a tracked handler goroutine; false when the
// stack is closing. Must be called with s.udpMu held (the only caller, UDP,
// checks udpClosed under it; close sets udpClosed before it waits for the
// handlers, so no handler starts after that).
func (s *Stack) goHandlerLocked(fn func()) bool {
	if s.udpClosed {
		return false
	}
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		fn()
	}()
	return true
}

// isClosed says whether Close has begun.
func (s *Stack) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
