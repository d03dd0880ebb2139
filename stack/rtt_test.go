package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// rtDevice is an in-memory Device for round-trip benchmarks and tests
// that reads the packets an rtApp injects and hands it what the stack
// writes, allocating nothing per packet. Like the Linux TUN with offload
// it vouches for the checksums of what it reads (ValidatingDevice),
// counts the reads that waited (WaitCountingDevice) and takes
// checksum-offloaded TCP packets (GSODevice).
type rtDevice struct {
	in    chan []byte // injected packets; Read copies them
	out   chan []byte // written packets, copies in ring
	done  chan struct{}
	ring  [64][]byte
	next  int
	waits atomic.Uint64
	// gsoWrites counts WriteGSO calls, writes Write calls.
	gsoWrites, writes atomic.Uint64
}

func newRTDevice() *rtDevice {
	d := &rtDevice{in: make(chan []byte, 16), out: make(chan []byte, len(rtDevice{}.ring)), done: make(chan struct{})}
	for i := range d.ring {
		d.ring[i] = make([]byte, 0, 65536)
	}
	return d
}

func (d *rtDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var p []byte
	select {
	case p = <-d.in:
	default:
		d.waits.Add(1)
		select {
		case p = <-d.in:
		case <-d.done:
			return 0, os.ErrClosed
		}
	}
	sizes[0] = copy(bufs[0][offset:], p)
	return 1, nil
}

func (d *rtDevice) ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	n, err := d.Read(bufs, sizes, offset)
	for i := range n {
		valid[i] = true
	}
	return n, err
}

func (d *rtDevice) ReadWaits() (uint64, bool) { return d.waits.Load(), true }

// put hands a copy of pkt to the app. The ring holds more packets than
// an rtApp ever leaves unread.
func (d *rtDevice) put(pkt []byte) error {
	b := append(d.ring[d.next%len(d.ring)][:0], pkt...)
	d.ring[d.next%len(d.ring)] = b
	d.next++
	select {
	case d.out <- b:
		return nil
	case <-d.done:
		return os.ErrClosed
	}
}

// Write is called by one writer at a time (the link holds wmu).
func (d *rtDevice) Write(bufs [][]byte, offset int) (int, error) {
	d.writes.Add(1)
	for _, b := range bufs {
		if err := d.put(b[offset:]); err != nil {
			return 0, err
		}
	}
	return len(bufs), nil
}

func (d *rtDevice) GSOMaxSize() int { return 65535 }

// WriteGSO takes the packet as the kernel would; the TCP checksum is left
// partial (the app does not check it).
func (d *rtDevice) WriteGSO(b []byte) error {
	d.gsoWrites.Add(1)
	return d.put(b[vnetHdrLen:])
}

func (d *rtDevice) BatchSize() int    { return 8 }
func (d *rtDevice) MTU() (int, error) { return 1500, nil }
func (d *rtDevice) Close() error {
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	return nil
}

// rtApp is an app's end of one TCP connection, built by hand: each
// request is one packet, and the next request acknowledges the last
// reply, as a Linux app's delayed ACK does, so that a round trip is one
// packet each way and the stack alone is measured.
type rtApp struct {
	dev      *rtDevice
	src, dst netip.AddrPort
	seq, ack uint32 // next to send; next expected from the stack
	pkt      []byte // the request being built (reused)
	// tsVal is the app's timestamp clock, tsEcr the stack's last
	// timestamp, echoed.
	tsVal, tsEcr uint32
	// ts: the stack's SYN-ACK took up the timestamps (the app's later
	// packets carry one).
	ts bool
	// pure counts the stack's packets without payload or SYN/FIN/RST
	// the app saw (lone ACKs).
	pure int
}

const rtMSS = 1460

// build writes an IPv4/TCP packet with flags and payload into a.pkt and
// returns it. Like a Linux app's, the SYN offers an MSS, SACK, window
// scaling and timestamps, and every later packet carries a timestamp.
func (a *rtApp) build(flags header.TCPFlags, payload []byte) []byte {
	var opts [20]byte
	a.tsVal++
	var no int
	if flags&header.TCPFlagSyn != 0 {
		no = header.EncodeMSSOption(rtMSS, opts[:])
		no += header.EncodeSACKPermittedOption(opts[no:])
		no += header.EncodeTSOption(a.tsVal, 0, opts[no:])
		opts[no] = header.TCPOptionNOP
		no++
		no += header.EncodeWSOption(7, opts[no:])
	} else if a.ts {
		opts[0], opts[1] = header.TCPOptionNOP, header.TCPOptionNOP
		no = 2 + header.EncodeTSOption(a.tsVal, a.tsEcr, opts[2:])
	}
	n := header.IPv4MinimumSize + header.TCPMinimumSize + no + len(payload)
	if cap(a.pkt) < n {
		a.pkt = make([]byte, n)
	}
	b := a.pkt[:n]
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(n), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(a.src.Addr().As4()), DstAddr: tcpip.AddrFrom4(a.dst.Addr().As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort: a.src.Port(), DstPort: a.dst.Port(), SeqNum: a.seq, AckNum: a.ack,
		DataOffset: uint8(header.TCPMinimumSize + no), Flags: flags, WindowSize: 65535 >> 7,
	})
	copy(tcp[header.TCPMinimumSize:], opts[:no])
	copy(tcp[header.TCPMinimumSize+no:], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	return b
}

// send injects the packet built last; the device copies it before the
// stack answers, so a.pkt may be reused once an answer came.
func (a *rtApp) send(ctx context.Context, pkt []byte) error {
	select {
	case a.dev.in <- pkt:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next returns the next packet of the stack that carries data or
// SYN/FIN/RST, counting the lone ACKs it passes.
func (a *rtApp) next(ctx context.Context) (header.TCP, error) {
	for {
		select {
		case p := <-a.dev.out:
			tcp := header.TCP(p[header.IPv4(p).HeaderLength():])
			if o := header.ParseTCPOptions(tcp.Options()); o.TS {
				a.tsEcr = o.TSVal
			}
			if len(tcp.Payload()) == 0 && tcp.Flags()&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst) == 0 {
				a.pure++
				continue
			}
			return tcp, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the stack's packet: %w", ctx.Err())
		}
	}
}

// dial completes the handshake.
func (a *rtApp) dial(ctx context.Context) error {
	a.seq = 1000
	if err := a.send(ctx, append([]byte(nil), a.build(header.TCPFlagSyn, nil)...)); err != nil {
		return err
	}
	synack, err := a.next(ctx)
	if err != nil {
		return err
	}
	if synack.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		return fmt.Errorf("answer to SYN has flags %v", synack.Flags())
	}
	o := header.ParseSynOptions(synack.Options(), true)
	if !o.SACKPermitted || o.WS < 0 {
		return fmt.Errorf("the stack's SYN-ACK declines options: %+v", o)
	}
	a.ts = o.TS
	a.seq++
	a.ack = synack.SequenceNumber() + 1
	return a.send(ctx, append([]byte(nil), a.build(header.TCPFlagAck, nil)...))
}

// roundTrip sends one byte and waits for the byte echoed.
func (a *rtApp) roundTrip(ctx context.Context, b byte) error {
	if err := a.send(ctx, a.build(header.TCPFlagAck|header.TCPFlagPsh, []byte{b})); err != nil {
		return err
	}
	a.seq++
	tcp, err := a.next(ctx)
	if err != nil {
		return err
	}
	if p := tcp.Payload(); len(p) != 1 || p[0] != b || tcp.SequenceNumber() != a.ack {
		return fmt.Errorf("reply %v seq %d, want [%d] seq %d", p, tcp.SequenceNumber(), b, a.ack)
	}
	a.ack++
	return nil
}

// exchange sends payload in full segments (rtMSS less room for the
// timestamp option), all at once, and waits until all of it came back.
func (a *rtApp) exchange(ctx context.Context, payload []byte) error {
	for rest := payload; len(rest) > 0; {
		k := min(len(rest), rtMSS-12)
		if err := a.send(ctx, append([]byte(nil), a.build(header.TCPFlagAck, rest[:k])...)); err != nil {
			return err
		}
		a.seq += uint32(k)
		rest = rest[k:]
	}
	var got []byte
	for len(got) < len(payload) {
		tcp, err := a.next(ctx)
		if err != nil {
			return err
		}
		if tcp.SequenceNumber() != a.ack {
			return fmt.Errorf("reply segment at %d, want %d", tcp.SequenceNumber(), a.ack)
		}
		got = append(got, tcp.Payload()...)
		a.ack += uint32(len(tcp.Payload()))
	}
	if string(got) != string(payload) {
		return fmt.Errorf("echoed %d bytes differ from the %d sent", len(got), len(payload))
	}
	return nil
}

// rtEcho is a Handler that echoes each connection's bytes as the router's
// relay forwards them: a notified reader (NotifyRead) that takes what is
// waiting with ReadTo and writes it back with one Write.
// conns, if not nil, gets each accepted connection.
type rtEcho struct{ conns chan<- *tcpConn }

func (rtEcho) HandleUDP(_ context.Context, f *UDPFlow) { f.Close() }

func (h rtEcho) HandleTCP(ctx context.Context, r *TCPRequest) {
	c, err := r.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	tc := c.(*tcpConn)
	if h.conns != nil {
		h.conns <- tc
	}
	ready := make(chan struct{}, 1)
	notify := func() {
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	var buf sliceWriter
	buf.b = make([]byte, 0, 64<<10)
	for {
		tc.NotifyRead(notify)
		select {
		case <-ready:
		case <-ctx.Done():
			return
		}
		buf.b = buf.b[:0]
		if _, err := tc.ReadTo(&buf); err != nil {
			return
		}
		if len(buf.b) > 0 {
			if _, err := tc.Write(buf.b); err != nil {
				return
			}
		}
	}
}

type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// rtSetup starts a stack on an rtDevice with the echo handler and dials
// one connection into it.
func rtSetup(tb testing.TB, tweak func(*Config)) (*Stack, *rtApp, context.Context) {
	return rtSetupWith(tb, rtEcho{}, tweak)
}

func rtSetupWith(tb testing.TB, h rtEcho, tweak func(*Config)) (*Stack, *rtApp, context.Context) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	tb.Cleanup(cancel)
	dev := newRTDevice()
	cfg := Config{Device: dev, Handler: h}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			tb.Errorf("stack Close: %v", err)
		}
	})
	a := &rtApp{dev: dev, src: netip.MustParseAddrPort("10.0.0.2:40000"), dst: netip.MustParseAddrPort("198.18.0.1:7")}
	if err := a.dial(ctx); err != nil {
		tb.Fatal(err)
	}
	// The first exchanges settle the connection (the handler's Accept,
	// the first notification's registration).
	for i := range 3 {
		if err := a.roundTrip(ctx, byte(i)); err != nil {
			tb.Fatal(err)
		}
	}
	return s, a, ctx
}

// BenchmarkTCPRoundTrip is the netstack's part of tunsocks' 1-byte round
// trip: a request packet read from the device, through gVisor to a
// notified reader, its byte written back and the reply written to the
// device, with the app's TCP played by hand (no second netstack), so that
// the CPU and the allocations per op are the stack's and the link's.
// "delayed": the default ACK delay; "nodelay": every request's ACK goes
// out on its own.
// Run: go test -run '^$' -bench TCPRoundTrip -benchtime 20000x ./stack/
func BenchmarkTCPRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"delayed", 0}, {"nodelay", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			_, a, ctx := rtSetup(b, func(c *Config) { c.TCP.AckDelay = tc.delay })
			b.ReportAllocs()
			cpu0 := processCPU(b)
			b.ResetTimer()
			for i := range b.N {
				if err := a.roundTrip(ctx, byte(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(a.pure)/float64(b.N), "lone-ACKs/op")
		})
	}
}

// processCPU is the CPU time the process has used so far (user and
// system, all threads), in nanoseconds: on a loaded machine a steadier
// measure of the work per op than the wall clock.
func processCPU(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// TestRoundTripAllocatesNothing: a 1-byte round trip through the stack
// (request read from the device, the reader notified, the reply written
// to the device, its ACK held and dropped) allocates nothing on the
// heap. It allocated three times before: twice in gVisor's default
// queueing discipline (a PacketBufferList per outgoing packet) and once
// in NotifyRead (the armed function's address).
func TestRoundTripAllocatesNothing(t *testing.T) {
	if raceOn {
		t.Skip("the race detector drops pooled items at random")
	}
	_, a, ctx := rtSetup(t, nil)
	i := 0
	allocs := testing.AllocsPerRun(500, func() {
		if err := a.roundTrip(ctx, byte(i)); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if allocs >= 1 {
		t.Errorf("a round trip allocates %.1f times, want none", allocs)
	}
	if a.pure != 0 {
		t.Errorf("the stack sent %d lone ACKs in %d round trips, want 0 (the replies carry them)", a.pure, i)
	}
}

// TestReadToModeratesInBulk: ReadTo tells the endpoint's receive-buffer
// moderation of small reads only once they add up to moderateMin bytes,
// and then of all of them. Before, each 1-byte request's read called
// ModerateRecvBuf (the endpoint's locks and the clock), and the
// endpoint had been told of every byte at once.
func TestReadToModeratesInBulk(t *testing.T) {
	conns := make(chan *tcpConn, 1)
	_, a, ctx := rtSetupWith(t, rtEcho{conns: conns}, nil)
	c := testenv.Recv(t, conns, "the accepted connection")
	told := func() int { return c.ep.(*tcp.Endpoint).RcvAutoParams.CopiedBytes }
	const small = 100
	for i := range small {
		if err := a.roundTrip(ctx, byte(i)); err != nil {
			t.Fatal(err)
		}
	}
	sent := 3 + small // rtSetup's round trips too
	if got := told(); got != 0 {
		t.Errorf("after %d 1-byte reads the endpoint was told of %d bytes, want 0 (below %d)", sent, got, moderateMin)
	}
	bulk := make([]byte, moderateMin)
	for i := range bulk {
		bulk[i] = byte(i)
	}
	if err := a.exchange(ctx, bulk); err != nil {
		t.Fatal(err)
	}
	sent += len(bulk)
	if got := told(); got != sent {
		t.Errorf("after %d bytes read the endpoint was told of %d, want all", sent, got)
	}
}

// TestSYNTimestampStripped: the app's SYN offers timestamps; by default
// the stack's SYN-ACK declines them (the link takes the option out of the
// SYN before gVisor sees it), and with KeepTimestamps it takes them up,
// as gVisor always did before. Round trips work either way.
func TestSYNTimestampStripped(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			_, a, ctx := rtSetup(t, func(c *Config) { c.TCP.KeepTimestamps = keep })
			if a.ts != keep {
				t.Errorf("the stack's SYN-ACK carries timestamps: %v, want %v", a.ts, keep)
			}
			for i := range 10 {
				if err := a.roundTrip(ctx, byte(i)); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestStripSYNTimestamp: only a SYN's timestamp option turns into NOPs,
// the other options stay, and the checksum stays right.
func TestStripSYNTimestamp(t *testing.T) {
	a := &rtApp{src: netip.MustParseAddrPort("10.0.0.2:40000"), dst: netip.MustParseAddrPort("198.18.0.1:7")}
	syn := append([]byte(nil), a.build(header.TCPFlagSyn, nil)...)
	if !stripSYNTimestamp(syn) {
		t.Fatal("the SYN's timestamp was not stripped")
	}
	tcp := header.TCP(syn[header.IPv4MinimumSize:])
	o := header.ParseSynOptions(tcp.Options(), false)
	if o.TS || o.MSS != rtMSS || !o.SACKPermitted || o.WS != 7 {
		t.Errorf("options after stripping: %+v, want MSS %d, SACK, WS 7 and no timestamp", o, rtMSS)
	}
	if !checksumsOK(syn) {
		t.Error("the stripped SYN's checksum is wrong")
	}
	if stripSYNTimestamp(syn) {
		t.Error("a SYN without a timestamp was changed")
	}
	a.ts = true
	ack := append([]byte(nil), a.build(header.TCPFlagAck, []byte("x"))...)
	if stripSYNTimestamp(ack) {
		t.Error("a data segment's timestamp was stripped")
	}
	synack := append([]byte(nil), a.build(header.TCPFlagSyn|header.TCPFlagAck, nil)...)
	if stripSYNTimestamp(synack) {
		t.Error("a SYN-ACK's timestamp was stripped")
	}
}

// TestStripSYNTimestampIPv6: the same for an IPv6 SYN.
func TestStripSYNTimestampIPv6(t *testing.T) {
	var opts [20]byte
	no := header.EncodeMSSOption(rtMSS, opts[:])
	no += header.EncodeSACKPermittedOption(opts[no:])
	no += header.EncodeTSOption(1, 0, opts[no:])
	opts[no] = header.TCPOptionNOP
	no++
	no += header.EncodeWSOption(7, opts[no:])
	tcpLen := header.TCPMinimumSize + no
	pkt := make([]byte, header.IPv6MinimumSize+tcpLen)
	src, dst := tcpip.AddrFrom16(netip.MustParseAddr("fd00::2").As16()), tcpip.AddrFrom16(netip.MustParseAddr("2001:db8::1").As16())
	header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen), TransportProtocol: header.TCPProtocolNumber,
		HopLimit: 64, SrcAddr: src, DstAddr: dst})
	tcp := header.TCP(pkt[header.IPv6MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 443, SeqNum: 1, DataOffset: uint8(tcpLen), Flags: header.TCPFlagSyn, WindowSize: 65535})
	copy(tcp[header.TCPMinimumSize:], opts[:no])
	tcp.SetChecksum(^checksum.Checksum(tcp, header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen))))
	if !checksumsOK(pkt) {
		t.Fatal("test SYN built with a wrong checksum")
	}
	if !stripSYNTimestamp(pkt) {
		t.Fatal("the SYN's timestamp was not stripped")
	}
	if o := header.ParseSynOptions(tcp.Options(), false); o.TS || o.MSS != rtMSS || !o.SACKPermitted || o.WS != 7 {
		t.Errorf("options after stripping: %+v", o)
	}
	if !checksumsOK(pkt) {
		t.Error("the stripped SYN's checksum is wrong")
	}
}
