// Package router is where a flow meets an outbound. It turns a flow from the
// netstack (or a request from the SOCKS server's front door) into metadata,
// asks the decider (rules) which outbound carries it, dials, and relays.
//
// TCP is decided and dialed before the app's handshake completes: a refused
// or rejected flow gets a RST at once, never accept-then-close. DNS to the
// intercepted address is answered in-process, over UDP and over TCP.
package router

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/stack"
)

// Outbound carries flows somewhere: DIRECT, a SOCKS upstream, a chain.
type Outbound interface {
	// Name is the outbound's name in logs and rules ("DIRECT", "corp").
	Name() string
	// DialContext opens a TCP connection to address ("host:port"; the host is
	// a domain when the flow's destination was a fake IP).
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens a UDP session. It returns an error wrapping
	// ErrUDPUnsupported when the outbound cannot carry UDP.
	ListenPacket(ctx context.Context) (PacketConn, error)
}

// PacketConn is one UDP session of an outbound (for SOCKS, one association).
type PacketConn interface {
	// Send sends p to to, an address or a name (the name of a fake IP; the
	// outbound resolves it: a SOCKS upstream on its side, DIRECT locally).
	Send(p []byte, to socks.Addr) error
	// Recv returns the next datagram and its sender: an address, or a name
	// when the upstream reports the sender by name.
	Recv(p []byte) (n int, from socks.Addr, err error)
	Close() error
}

// ErrUDPUnsupported is wrapped by outbounds that cannot carry UDP.
var ErrUDPUnsupported = errors.New("outbound does not support UDP")

// Action is what a decision does with a flow.
type Action int

// Actions.
const (
	Proxy      Action = iota // carry it through Decision.Outbound
	Reject                   // refuse at once: TCP RST, UDP dropped (ICMP unreachable where the stack can)
	RejectDrop               // drop silently
)

// Decision is the decider's answer for one flow.
type Decision struct {
	Action   Action
	Outbound Outbound // for Proxy
	Rule     string   // the rule that matched, for logs and explain
	// Match, when the decider has rules, says which one matched (Index -1:
	// none did); the flow table and metrics show it.
	Match *rules.Match
	// Hits, when not nil, counts the flows this decision opens.
	Hits *RuleHits
}

// Decider picks the outbound for a flow. It must be safe for concurrent use.
type Decider func(m *rules.Metadata) Decision

// Static returns a Decider that sends every flow through out.
func Static(out Outbound) Decider {
	return func(*rules.Metadata) Decision { return Decision{Action: Proxy, Outbound: out, Rule: "default"} }
}

// FlowRecord describes one finished flow.
type FlowRecord struct {
	ID       string // the flow's id in the table (Flows, CloseFlow); "" for flows that never opened
	Network  string
	Src, Dst netip.AddrPort
	Host     string // domain, when known
	// SniffHost is the name read from the flow's first bytes (TLS, HTTP,
	// QUIC), also in Host; "" when the flow was not sniffed or told none.
	SniffHost string
	InType    string // the inbound the flow came through (see Inbound); "" when untagged
	InName    string
	InUser    string
	Process   string // the app's executable, when a rule or the inbound looked it up
	PID       int    // the app's process id, when looked up; 0 when unknown
	Outbound  string // outbound name, or REJECT / REJECT-DROP
	Rule      string
	Up, Down  int64
	Start     time.Time
	Duration  time.Duration
	Err       error // why it failed or ended abnormally; nil for a clean end
}

// Config builds a Router. Decide is required.
type Config struct {
	Decide Decider
	// ReverseHost maps a fake IP back to its domain; nil disables it. The
	// outbound is then given the domain, so the upstream resolves it.
	ReverseHost func(netip.Addr) (string, bool)
	// AcquireHost and ReleaseHost, when both set, are used for flows from
	// a stack instead of ReverseHost: AcquireHost maps a fake IP to its
	// domain and holds the mapping, so the pool does not give the address
	// to another name while the flow is open; the router calls ReleaseHost
	// once for every successful AcquireHost, when the flow ends (a UDP flow
	// holds each fake IP it sends to, up to maxHeldPerFlow).
	AcquireHost func(netip.Addr) (string, bool)
	ReleaseHost func(netip.Addr)
	// RealHost names a real address that DNS answered for a name (a DIRECT
	// or filtered name); nil disables it. The name is used for rules only:
	// the outbound still dials the address the app chose.
	RealHost func(netip.Addr) (string, bool)
	// DNS, when set, answers UDP datagrams and TCP connections to port 53
	// that it claims (Intercept reports true) in-process instead of routing
	// them.
	DNS DNSHandler
	// DialTimeout bounds dialing an outbound before the app's SYN is answered
	// with a RST; 0 means 10 s.
	DialTimeout time.Duration
	// TCPIdle reaps TCP flows idle this long; 0 means 10 minutes... of
	// silence in both directions.
	TCPIdle time.Duration
	// Poller, when not nil, parks the upstream-reading direction of TCP
	// flows that have gone quiet (relay.StreamOptions.Poller): an idle
	// flow then holds no goroutine for it. The caller closes it after the
	// router's flows have ended.
	Poller *relay.Poller
	// UDPIdle and DNSIdle expire UDP flows (DNSIdle: flows whose first
	// datagram went to port 53); 0 means 60 s and 10 s. These are the UDP
	// flows' only idle timers.
	UDPIdle, DNSIdle time.Duration
	Logger           *slog.Logger
	// OnFlow, when set, is called once for every finished flow.
	OnFlow func(FlowRecord)
	// Process, when set, looks up the process behind a flow the rules did
	// not look up, for the flow table (only when Flows is called: no cost
	// while nobody looks).
	Process ProcessLookup
	// Metrics, when set, gets the router's families: flows by network,
	// inbound, outbound and rule type; flows open; bytes by outbound; dial
	// durations and errors by outbound.
	Metrics *metrics.Registry
	// DialReason, when set, names the cause of a failed dial for the dial
	// errors metric (refused, timeout, auth, unreachable, proto); "" or nil
	// leaves it to the router's own classification.
	DialReason func(error) string
	// Admit, when set, is asked before a new flow from a stack is served;
	// false refuses it (TCP: RST; UDP: the flow is closed, its datagram
	// dropped) and counts it in Stats.Refused. The memory ceiling uses it.
	Admit func() bool
	// Sniff, when set, reads the names of flows to real addresses from
	// their first bytes; see SniffConfig.
	Sniff *SniffConfig
}

// DNSHandler answers DNS queries the router intercepts.
type DNSHandler interface {
	// Intercept reports whether a UDP datagram or TCP connection to dst
	// is DNS to answer locally.
	Intercept(dst netip.AddrPort) bool
	// Handle answers one query datagram; a nil response means drop. A
	// response that comes with an error (SERVFAIL when forwarding failed)
	// is sent; the error is only logged.
	Handle(ctx context.Context, query []byte) ([]byte, error)
	// ServeStream answers DNS over TCP (RFC 7766 framing) on c until the
	// app or ctx ends it, and closes c.
	ServeStream(ctx context.Context, c net.Conn) error
}

// ProcessLookup finds the local process that owns a flow
// (procinfo.Finder.LookupOwner).
type ProcessLookup func(network string, src, dst netip.AddrPort) (procinfo.Owner, error)

// Inbound is a source of flows: the TUN, a WireGuard device, an exec
// namespace's TUN, a gateway interface. Handler tags every flow it hands
// the router with it, so rules (IN-TYPE, IN-NAME, IN-USER), logs and flow
// records know where a flow came from.
type Inbound struct {
	Type string // rules.InTUN, rules.InWireGuard, ...
	Name string // the TUN device's name, "wg", "exec:curl"
	// User names the user behind a flow from its source address (a
	// WireGuard peer by its tunnel address); nil, or "", for none.
	User func(src netip.Addr) string
	// Classify, when not nil, may re-tag a flow by its source: a TUN that
	// also carries what devices forward through this host (gateway mode)
	// tags their flows rules.InGateway with the interface's name. A ""
	// type keeps Type and Name.
	Classify func(src netip.Addr) (typ, name string)
}

// flowIn is an Inbound resolved for one flow.
type flowIn struct{ typ, name, user string }

func (in *Inbound) tag(src netip.AddrPort) flowIn {
	if in == nil {
		return flowIn{}
	}
	f := flowIn{typ: in.Type, name: in.Name}
	if in.Classify != nil {
		if typ, name := in.Classify(src.Addr().Unmap()); typ != "" {
			f.typ, f.name = typ, name
		}
	}
	if in.User != nil {
		f.user = in.User(src.Addr().Unmap())
	}
	return f
}

// Handler returns a stack.Handler that hands the router every flow it gets,
// tagged with in. The Router's own HandleTCP and HandleUDP leave flows
// untagged.
func (r *Router) Handler(in Inbound) stack.Handler { return &inboundHandler{r: r, in: in} }

type inboundHandler struct {
	r  *Router
	in Inbound
}

func (h *inboundHandler) HandleTCP(ctx context.Context, req *stack.TCPRequest) {
	h.r.handleTCP(ctx, &h.in, req)
}

func (h *inboundHandler) HandleUDP(ctx context.Context, f *stack.UDPFlow) {
	h.r.handleUDP(ctx, &h.in, f)
}

// Router dispatches flows. It implements stack.Handler, and its FrontDoor
// is the SOCKS server's Dialer, so both front doors obey the same rules.
type Router struct {
	cfg   Config
	log   *slog.Logger
	stats Stats
	table *table
	m     routerMetrics

	udpWarnOnce sync.Map // outbound name -> struct{}: "no UDP" logged once
}

// Stats are live counters, safe to read at any time.
type Stats struct {
	TCPOpen, UDPOpen   atomic.Int64
	TCPTotal, UDPTotal atomic.Int64
	Rejected, Failed   atomic.Int64
	// Refused counts flows Config.Admit turned away; Shed the flows
	// ShedIdle closed.
	Refused, Shed atomic.Int64
	Up, Down      atomic.Int64
	Sniffed       atomic.Int64 // flows whose name was read from their first bytes
}

// New builds a Router.
func New(cfg Config) (*Router, error) {
	if cfg.Decide == nil {
		return nil, errors.New("router: Config.Decide is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.TCPIdle <= 0 {
		cfg.TCPIdle = 10 * time.Minute
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = 60 * time.Second
	}
	if cfg.DNSIdle <= 0 {
		cfg.DNSIdle = 10 * time.Second
	}
	if sc := cfg.Sniff; sc != nil {
		if sc.Want == nil {
			return nil, errors.New("router: Config.Sniff.Want is required")
		}
		c := *sc
		if c.Timeout <= 0 {
			c.Timeout = defaultSniffTimeout
		}
		if c.MaxBytes <= 0 {
			c.MaxBytes = defaultSniffMaxBytes
		}
		cfg.Sniff = &c
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{cfg: cfg, log: log, table: newTable()}
	reg := cfg.Metrics
	if reg == nil {
		reg = metrics.NewRegistry() // counted all the same, shown nowhere
	}
	r.registerMetrics(reg)
	return r, nil
}

// Stats returns the router's live counters.
func (r *Router) Stats() *Stats { return &r.stats }

// metadata builds the rules' view of a flow to dst, and the address its
// outbound is given: the name when dst is a fake IP (so the upstream
// resolves it), else dst itself. A name (a SOCKS client's domain request)
// is the rules' Host as it is.
//
// reverse maps a fake IP to its name: r.reverse, or a function that also
// holds the mapping for the flow (see Config.AcquireHost).
func (r *Router) metadata(network string, in flowIn, src netip.AddrPort, dst socks.Addr, reverse func(netip.Addr) (string, bool)) (m *rules.Metadata, target socks.Addr) {
	m = &rules.Metadata{Network: network, Src: src, UID: -1, InType: in.typ, InName: in.name, InUser: in.user}
	if dst.Name != "" {
		m.Host = dst.Name
		m.Dst = netip.AddrPortFrom(netip.Addr{}, dst.Port)
		return m, dst
	}
	m.Dst = netip.AddrPortFrom(dst.IP, dst.Port)
	if host, ok := reverse(dst.IP); ok {
		m.Host = host
		return m, socks.Addr{Name: host, Port: dst.Port}
	}
	if r.cfg.RealHost != nil {
		if host, ok := r.cfg.RealHost(dst.IP); ok {
			m.Host = host
		}
	}
	return m, dst
}

// reverse maps a fake IP to its name without holding it.
func (r *Router) reverse(a netip.Addr) (string, bool) {
	if r.cfg.ReverseHost == nil {
		return "", false
	}
	return r.cfg.ReverseHost(a)
}

// holds reports whether flows hold their fake IPs (Config.AcquireHost).
func (r *Router) holds() bool { return r.cfg.AcquireHost != nil && r.cfg.ReleaseHost != nil }

// tcpHold is the fake IP a TCP flow holds.
type tcpHold struct {
	r  *Router
	ip netip.Addr
}

// acquire is the reverse function of a TCP flow: it holds the mapping.
func (h *tcpHold) acquire(a netip.Addr) (string, bool) {
	host, ok := h.r.cfg.AcquireHost(a)
	if ok {
		h.ip = a
	}
	return host, ok
}

// release ends the hold, if any.
func (h *tcpHold) release() {
	if h.ip.IsValid() {
		h.r.cfg.ReleaseHost(h.ip)
		h.ip = netip.Addr{}
	}
}

// ipAddr is dst as a socks.Addr, the address kept as it is.
func ipAddr(dst netip.AddrPort) socks.Addr { return socks.Addr{IP: dst.Addr(), Port: dst.Port()} }

func (r *Router) decide(ctx context.Context, m *rules.Metadata) Decision {
	d := r.cfg.Decide(m)
	if r.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []any{"net", m.Network, "in", inLabel(m.InType, m.InName), "src", m.Src, "dst", m.Dst, "host", m.Host,
			"outbound", d.name(), "rule", d.Rule}
		if m.InUser != "" {
			attrs = append(attrs, "user", m.InUser)
		}
		if m.Process != "" {
			attrs = append(attrs, "proc", m.Process)
		}
		if m.PID > 0 {
			attrs = append(attrs, "pid", m.PID)
		}
		r.log.Debug("decision", attrs...)
	}
	return d
}

func (d Decision) name() string {
	switch d.Action {
	case Reject:
		return "REJECT"
	case RejectDrop:
		return "REJECT-DROP"
	}
	if d.Outbound == nil {
		return "<nil>"
	}
	return d.Outbound.Name()
}

func (r *Router) finish(rec FlowRecord) {
	rec.Duration = time.Since(rec.Start)
	// An ordinary end is logged at debug level, which is off by default:
	// the attributes are built only when the record is logged (they cost
	// a flow about ten allocations).
	level, msg := flowLogLevel(rec.Err)
	if ctx := context.Background(); r.log.Enabled(ctx, level) {
		r.log.Log(ctx, level, msg, flowLogAttrs(rec)...)
	}
	if r.cfg.OnFlow != nil {
		r.cfg.OnFlow(rec)
	}
}

// flowLogLevel is how a flow that ended with err is logged.
func flowLogLevel(err error) (slog.Level, string) {
	switch {
	case errors.Is(err, ErrClosedByRequest):
		return slog.LevelInfo, "flow closed by request"
	case err != nil && !errors.Is(err, relay.ErrIdle) && !errors.Is(err, ErrShed):
		return slog.LevelInfo, "flow failed"
	}
	return slog.LevelDebug, "flow"
}

// flowLogAttrs are the attributes of a finished flow's log record.
func flowLogAttrs(rec FlowRecord) []any {
	attrs := []any{"net", rec.Network, "src", rec.Src, "dst", rec.Dst, "outbound", rec.Outbound,
		"up", rec.Up, "down", rec.Down, "dur", rec.Duration.Round(time.Millisecond)}
	if rec.Host != "" {
		attrs = append(attrs, "host", rec.Host)
	}
	if rec.SniffHost != "" {
		attrs = append(attrs, "sniffed", rec.SniffHost)
	}
	if in := inLabel(rec.InType, rec.InName); in != "" {
		attrs = append(attrs, "in", in)
	}
	if rec.InUser != "" {
		attrs = append(attrs, "user", rec.InUser)
	}
	if rec.Process != "" {
		attrs = append(attrs, "proc", rec.Process)
	}
	if rec.PID > 0 {
		attrs = append(attrs, "pid", rec.PID)
	}
	switch {
	case errors.Is(rec.Err, ErrClosedByRequest):
		attrs = append(attrs, "id", rec.ID)
	case rec.Err != nil && !errors.Is(rec.Err, relay.ErrIdle) && !errors.Is(rec.Err, ErrShed):
		attrs = append(attrs, "err", rec.Err)
	}
	return attrs
}

// inLabel names an inbound in logs: its name, else its type.
func inLabel(typ, name string) string {
	if name != "" {
		return name
	}
	return typ
}
