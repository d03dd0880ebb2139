package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// SystemTCP configures the system TCP mode (Config.SystemTCP): the app's TCP
// connections are terminated by the host kernel's TCP instead of gVisor's.
//
// The reader rewrites every TCP packet from the app (source S, destination
// D) to come from a fake peer F (an address next to the TUN's own, and a
// port) and to go to a kernel listener L on the TUN's own address, and
// writes it back into the TUN; the kernel delivers it to L. L's packets to
// F come out of the TUN and are rewritten back (from D, to S). Each
// connection L accepts from F is the app's connection to D. UDP and ICMP
// still go through gVisor.
//
// The kernel's TCP is cheaper per packet and per connection than gVisor's,
// and Handler semantics are kept: the app's SYN is held until the Handler
// decides, so a refused upstream still gives the app a RST at once. How
// many attempts may be in flight and how long the app has to complete its
// handshake are TCPOptions (MaxInFlight, MaxInFlightPerSource,
// HandshakeTimeout), the same for both TCP stacks.
//
// Everything of this mode stays inside the stack: the listeners, the
// translation, and leaving the translated leg out of Config.Tap.
type SystemTCP struct {
	// Addrs are the TUN device's own addresses with their prefixes, as
	// given to the device (e.g. 198.18.0.1/15, fc00::1/18). The first
	// address of each family gets a listener; fake peers are the 254
	// addresses after it, which must be inside the prefix and otherwise
	// unused.
	Addrs []netip.Prefix
	// Listen opens a listener where the TUN's packets are delivered (the
	// TUN's network namespace). nil means ListenSystemTCP with New's
	// context.
	Listen func(network, address string) (net.Listener, error)
}

// ListenSystemTCP opens the kind of listener SystemTCP.Listen should
// return: its connections come from an app on this host, so they get no
// TCP keep-alives (which cost four system calls per accepted connection).
func ListenSystemTCP(ctx context.Context, network, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, network, address)
}

// natGrace is how long a closed connection's translation is kept, for the
// last ACKs and FINs of its close.
const natGrace = 15 * time.Second

const fakePeers = 254

type natState uint8

const (
	natPending     natState = iota // SYN held, the Handler deciding
	natAccepting                   // SYN sent to the listener, waiting for accept
	natEstablished                 // the listener accepted it
	natClosed                      // the conn was closed; expires after natGrace
)

type natEntry struct {
	probe    chan struct{}     // self-test entry: signalled by the listener's answer
	app      [2]netip.AddrPort // app source, destination
	fake     netip.AddrPort
	state    natState
	isn      uint32 // the app's initial sequence number
	syn      []byte // the app's SYN, while pending
	accepted chan *net.TCPConn
	closedAt time.Time
	// The accepted connection's NotifyClose (kept here, not in every
	// tcpConn of either stack), under its nmu.
	onClose    func()
	connClosed bool
}

type sysFamily struct {
	self  netip.Addr
	lport uint16
	ln    net.Listener
	fakes []netip.Addr // the fake peers, in order
	// off is set when the self-test found that the kernel does not take
	// this family's translated packets (a firewall): its TCP goes to
	// gVisor. The other family keeps the kernel when its test passed.
	off atomic.Bool
}

// name is the family's name in logs and status: IPv4 or IPv6.
func (f *sysFamily) name() string {
	if f.self.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func newSysFamily(self netip.Addr, lport uint16, ln net.Listener) *sysFamily {
	f := &sysFamily{self: self, lport: lport, ln: ln, fakes: make([]netip.Addr, fakePeers)}
	a := self
	for i := range f.fakes {
		a = a.Next()
		f.fakes[i] = a
	}
	return f
}

type sysTCP struct {
	cfg  SystemTCP
	fams []*sysFamily
	// start hands a new held SYN to the Handler (Stack.startSystemRequest).
	start func(e *natEntry, src, dst netip.AddrPort)
	// link writes the packets built here (RSTs, SYNs, the self-test's
	// probes) to the device; set by New before any packet moves.
	link *linkEndpoint
	log  *slog.Logger

	mu     sync.Mutex
	byApp  map[[2]netip.AddrPort]*natEntry
	byFake map[netip.AddrPort]*natEntry
	next   uint32
	// peak is the most translations byFake held since the maps were last
	// made anew (sweep): a Go map keeps the room of its largest size.
	peak int

	done chan struct{}
	wg   sync.WaitGroup
}

func newSysTCP(ctx context.Context, s *Stack, cfg SystemTCP) (*sysTCP, error) {
	if cfg.Listen == nil {
		cfg.Listen = func(network, address string) (net.Listener, error) {
			return ListenSystemTCP(ctx, network, address)
		}
	}
	t := &sysTCP{cfg: cfg, start: s.startSystemRequest, log: s.log, byApp: map[[2]netip.AddrPort]*natEntry{}, byFake: map[netip.AddrPort]*natEntry{}, done: make(chan struct{})}
	var listenErr error      // the first family's whose listener failed
	tried := map[bool]bool{} // by Is6: the families whose first address was tried
	for _, p := range cfg.Addrs {
		a := p.Addr().Unmap()
		if tried[a.Is6()] {
			continue // one listener per family: the first address of each
		}
		tried[a.Is6()] = true
		fam := newSysFamily(a, 0, nil)
		if !p.Contains(fam.fakes[fakePeers-1]) {
			t.closeListeners()
			return nil, fmt.Errorf("stack: system TCP: prefix %v leaves no room for %d fake peers after %v", p, fakePeers, a)
		}
		network := "tcp4"
		if a.Is6() {
			network = "tcp6"
		}
		ln, err := cfg.Listen(network, netip.AddrPortFrom(a, 0).String())
		if err != nil {
			// That family's TCP goes through gVisor, as when its self-test
			// fails (IPv6 disabled on the host, say); the other keeps the
			// kernel.
			err = fmt.Errorf("stack: system TCP listener on %v: %w", a, err)
			if listenErr == nil {
				listenErr = err
			}
			t.log.Warn("system TCP: no listener for this family; its TCP goes through gVisor instead",
				"family", fam.name(), "err", err)
			continue
		}
		fam.ln, fam.lport = ln, uint16(ln.Addr().(*net.TCPAddr).Port)
		t.fams = append(t.fams, fam)
		t.log.Debug("system TCP listener", "addr", ln.Addr().String(), "fake peers", fmt.Sprintf("%v-%v", fam.fakes[0], fam.fakes[fakePeers-1]))
	}
	if len(t.fams) == 0 {
		if listenErr != nil {
			return nil, listenErr
		}
		return nil, errors.New("stack: system TCP needs the TUN's addresses")
	}
	return t, nil
}

// run starts the accept loops and the sweeper.
func (t *sysTCP) run() {
	for _, f := range t.fams {
		t.wg.Add(1)
		go t.acceptLoop(f)
	}
	t.wg.Add(1)
	go t.sweep()
}

// inner reports whether pkt belongs to the translated leg: to or from one
// of the kernel listeners. App traffic never has a listener's address and
// port as an end, so a capture of what the app sent and received leaves
// exactly these packets out (Config.Tap).
func (t *sysTCP) inner(pkt []byte) bool {
	p, ok := parseTCP(pkt)
	if !ok {
		return false
	}
	for _, f := range t.fams {
		l := netip.AddrPortFrom(f.self, f.lport)
		if !f.off.Load() && (p.src == l || p.dst == l) {
			return true
		}
	}
	return false
}

func (t *sysTCP) closeListeners() {
	for _, f := range t.fams {
		f.ln.Close()
	}
}

// close stops the listeners and the sweeper and waits for them.
func (t *sysTCP) close() {
	close(t.done)
	t.closeListeners()
	t.wg.Wait()
}

func (t *sysTCP) family(a netip.Addr) *sysFamily {
	for _, f := range t.fams {
		if f.self.Is4() == a.Is4() {
			return f
		}
	}
	return nil
}

func (f *sysFamily) isFake(a netip.Addr) bool {
	return a.Is4() == f.self.Is4() && !a.Less(f.fakes[0]) && !f.fakes[len(f.fakes)-1].Less(a)
}

// divert handles one TCP packet read from the device, rewriting it in place.
// It reports whether the packet is the system stack's (false: give it to
// gVisor) and whether it is to be written back to the device.
func (t *sysTCP) divert(b []byte) (mine, write bool) {
	p, ok := parseTCP(b)
	if !ok {
		return false, false
	}
	f := t.family(p.src.Addr())
	if f == nil || f.off.Load() {
		return false, false
	}
	if p.src.Addr() == f.self && p.src.Port() == f.lport && f.isFake(p.dst.Addr()) {
		// The listener's side of a connection, back to the app.
		t.mu.Lock()
		e := t.byFake[p.dst]
		var app [2]netip.AddrPort
		if e != nil {
			app = e.app
		}
		t.mu.Unlock()
		if e == nil {
			return true, false
		}
		if e.probe != nil {
			select {
			case e.probe <- struct{}{}:
			default:
			}
			return true, false
		}
		p.translate(app[1], app[0])
		return true, true
	}
	key := [2]netip.AddrPort{p.src, p.dst}
	t.mu.Lock()
	e := t.byApp[key]
	if e != nil && p.flags&(tcpSYN|tcpACK) == tcpSYN && e.state != natPending && p.seq() != e.isn {
		// The app reuses the address pair of a connection it has
		// finished (TIME-WAIT reuse): a new connection, with a new fake
		// peer. The old translation stays (byFake) until it expires, for
		// the old connection's last packets.
		e = nil
	}
	if e == nil {
		if p.flags&(tcpSYN|tcpACK|tcpRST) != tcpSYN {
			t.mu.Unlock()
			if p.flags&tcpRST == 0 {
				t.writeRST(p) // no such connection (any more)
			}
			return true, false
		}
		fake, ok := t.allocLocked(f)
		if !ok {
			t.mu.Unlock()
			return true, false // the app retransmits its SYN
		}
		e = &natEntry{app: key, fake: fake, isn: p.seq(), syn: append([]byte(nil), b...), accepted: make(chan *net.TCPConn, 1)}
		t.byApp[key] = e
		t.byFake[fake] = e
		t.peak = max(t.peak, len(t.byFake))
		t.mu.Unlock()
		t.start(e, p.src, p.dst)
		return true, false
	}
	state, fake := e.state, e.fake
	t.mu.Unlock()
	if state == natPending {
		return true, false // a retransmitted SYN while the Handler decides
	}
	p.translate(fake, netip.AddrPortFrom(f.self, f.lport))
	return true, true
}

// probeTimeout bounds the self-test's wait for the kernel's answer, and
// the probe's SYN is sent again every probeResend meanwhile: the app's
// traffic can start while the test runs (the TUN is up and routed before
// the stack), and on a busy TUN the probe's SYN or the kernel's SYN-ACK can
// be dropped with the transfer's packets. One SYN and a 2 s wait failed the
// test on a loaded machine (e2e TestPipelineSystemStack, 3 of 14 runs under
// -race): TCP then went to gVisor, and the system TCP connections already
// open were reset.
const (
	probeTimeout = 5 * time.Second
	probeResend  = 500 * time.Millisecond
)

// selfTest sends each listener a SYN from a fake peer through the device
// and waits for the SYN-ACK to come back out of it, for both families at
// once. A family whose SYN-ACK does not come (a firewall on the host
// drops new connections arriving on the TUN, perhaps for one family
// only) turns its system TCP off and says so: gVisor terminates that
// family's TCP instead (sysFamily.off), while a family whose test passed
// keeps the kernel. The read loop must run.
func (t *sysTCP) selfTest() {
	errs := make([]error, len(t.fams))
	var wg sync.WaitGroup
	for i, f := range t.fams {
		wg.Go(func() { errs[i] = t.probe(f) })
	}
	wg.Wait()
	for i, f := range t.fams {
		if errs[i] == nil {
			continue
		}
		f.off.Store(true)
		f.ln.Close()
		t.log.Warn("system TCP: the kernel does not take connections arriving on the TUN (a firewall dropping new inbound TCP on it?); TCP goes through gVisor instead for this family",
			"family", f.name(), "listener", netip.AddrPortFrom(f.self, f.lport).String(), "test", errs[i].Error(), "waited", probeTimeout)
	}
}

// errNoSYNACK is a failed self-test's probe: nothing came back.
var errNoSYNACK = errors.New("no SYN-ACK came back")

// probe is one family's self-test: nil when the listener's SYN-ACK to
// the probe's SYN came back out of the device.
func (t *sysTCP) probe(f *sysFamily) error {
	// Port 1 of the last fake peer: the allocator never hands it out.
	fake := netip.AddrPortFrom(f.fakes[len(f.fakes)-1], 1)
	e := &natEntry{probe: make(chan struct{}, 1), fake: fake}
	t.mu.Lock()
	t.byFake[fake] = e
	t.mu.Unlock()
	const isn = 0x74736b30
	listener := netip.AddrPortFrom(f.self, f.lport)
	err := t.link.writeRaw(segment(fake, listener, isn, 0, tcpSYN, 65535))
	if err == nil {
		err = errNoSYNACK
		// The kernel answers a repeated SYN with its SYN-ACK again.
		timeout, resend := time.NewTimer(probeTimeout), time.NewTicker(probeResend)
	wait:
		for {
			select {
			case <-e.probe:
				err = nil
				break wait
			case <-resend.C:
				_ = t.link.writeRaw(segment(fake, listener, isn, 0, tcpSYN, 65535))
			case <-timeout.C:
				break wait
			}
		}
		timeout.Stop()
		resend.Stop()
	}
	// Whatever the kernel holds for the probe, reset it.
	_ = t.link.writeRaw(segment(fake, listener, isn+1, 0, tcpRST, 0))
	t.mu.Lock()
	delete(t.byFake, fake)
	t.mu.Unlock()
	return err
}

// allocLocked picks a fake peer address and port no entry uses.
func (t *sysTCP) allocLocked(f *sysFamily) (netip.AddrPort, bool) {
	const ports = 64512 // 1024..65535
	for range 64 {
		n := t.next
		t.next++
		ap := netip.AddrPortFrom(f.fakes[(n/ports)%fakePeers], uint16(1024+n%ports))
		if _, used := t.byFake[ap]; !used {
			return ap, true
		}
	}
	return netip.AddrPort{}, false
}

func (t *sysTCP) remove(e *natEntry) {
	t.mu.Lock()
	if t.byApp[e.app] == e {
		delete(t.byApp, e.app)
	}
	if t.byFake[e.fake] == e {
		delete(t.byFake, e.fake)
	}
	t.mu.Unlock()
}

// accept lets the held SYN through to the listener and waits for the
// kernel to complete the handshake, or for abort to be closed (the request
// was shed, or its handshake timed out; see TCPRequest.Accept).
func (t *sysTCP) accept(e *natEntry, abort <-chan struct{}) (*net.TCPConn, error) {
	f := t.family(e.app[0].Addr())
	t.mu.Lock()
	syn := e.syn
	e.syn, e.state = nil, natAccepting
	t.mu.Unlock()
	p, _ := parseTCP(syn)
	listener := netip.AddrPortFrom(f.self, f.lport)
	p.rewrite(e.fake, listener)
	err := t.link.writeRaw(syn)
	if err != nil {
		t.remove(e)
		return nil, err
	}
	select {
	case c := <-e.accepted:
		return c, nil
	case <-abort:
		err = errHandshakeAborted
	case <-t.done:
		err = errStackClosed
	}
	t.remove(e)
	select {
	case c := <-e.accepted: // accepted just as we gave up
		c.SetLinger(0)
		c.Close()
	default:
		// The kernel holds a half-open connection from the fake peer:
		// reset it (the app's ACK would carry e.isn+1).
		_ = t.link.writeRaw(segment(e.fake, listener, e.isn+1, 0, tcpRST, 0))
	}
	return nil, err
}

// reject answers the held SYN with a RST.
func (t *sysTCP) reject(e *natEntry) {
	t.mu.Lock()
	syn := e.syn
	e.syn = nil
	t.mu.Unlock()
	t.remove(e)
	if p, ok := parseTCP(syn); ok {
		t.writeRST(p)
	}
}

func (t *sysTCP) acceptLoop(f *sysFamily) {
	defer t.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			select {
			case <-t.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			t.log.Debug("system TCP accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		tc := c.(*net.TCPConn)
		peer := tc.RemoteAddr().(*net.TCPAddr).AddrPort()
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		t.mu.Lock()
		e := t.byFake[peer]
		ok := e != nil && e.state == natAccepting
		if ok {
			e.state = natEstablished
		}
		t.mu.Unlock()
		if !ok {
			tc.SetLinger(0)
			tc.Close()
			continue
		}
		e.accepted <- tc
	}
}

// closed marks a connection closed; its translation expires after natGrace.
func (t *sysTCP) closed(e *natEntry) {
	t.mu.Lock()
	e.state, e.closedAt = natClosed, time.Now()
	t.mu.Unlock()
}

func (t *sysTCP) sweep() {
	defer t.wg.Done()
	tick := time.NewTicker(natGrace / 3)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case now := <-tick.C:
			t.sweepOnce(now)
		}
	}
}

// compactMin is the peak number of translations above which sweepOnce
// makes the maps anew once they hold an eighth of it or less.
const compactMin = 1024

// sweepOnce drops the translations of connections closed more than
// natGrace before now. When that leaves the maps at an eighth of their
// peak or less, they are made anew: a Go map never gives back the room
// it grew to, and a burst of short connections (thousands a second, each
// kept natGrace) grows these two to megabytes an idle process would
// keep.
func (t *sysTCP) sweepOnce(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for f, e := range t.byFake {
		if e.state == natClosed && now.Sub(e.closedAt) > natGrace {
			delete(t.byFake, f)
			if t.byApp[e.app] == e {
				delete(t.byApp, e.app)
			}
		}
	}
	if t.peak < compactMin || len(t.byFake) > t.peak/8 {
		return
	}
	byApp := make(map[[2]netip.AddrPort]*natEntry, len(t.byApp))
	for k, e := range t.byApp {
		byApp[k] = e
	}
	byFake := make(map[netip.AddrPort]*natEntry, len(t.byFake))
	for k, e := range t.byFake {
		byFake[k] = e
	}
	t.byApp, t.byFake, t.peak = byApp, byFake, len(byFake)
}

// writeRST answers the app's packet p with a RST from its destination.
func (t *sysTCP) writeRST(p tcpPacket) {
	seg := p.b[p.ihl:]
	seq := binary.BigEndian.Uint32(seg[4:])
	ack := binary.BigEndian.Uint32(seg[8:])
	var outSeq, outAck uint32
	flags := byte(tcpRST)
	if p.flags&tcpACK != 0 {
		outSeq = ack
	} else {
		n := uint32(len(seg) - int(seg[12]>>4)*4)
		if p.flags&tcpSYN != 0 {
			n++
		}
		if p.flags&tcpFIN != 0 {
			n++
		}
		outAck = seq + n
		flags |= tcpACK
	}
	b := segment(p.dst, p.src, outSeq, outAck, flags, 0)
	if err := t.link.writeRaw(b); err != nil {
		t.log.Debug("system TCP: write RST", "err", err)
	}
}
