package stack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	appV4 = netip.MustParsePrefix("10.0.0.2/24")
	appV6 = netip.MustParsePrefix("fd00::2/64")
)

// handlerFuncs adapts two functions to stack.Handler.
type handlerFuncs struct {
	tcp func(ctx context.Context, r *stack.TCPRequest)
	udp func(ctx context.Context, f *stack.UDPFlow)
}

func (h handlerFuncs) HandleTCP(ctx context.Context, r *stack.TCPRequest) {
	if h.tcp == nil {
		r.Reject()
		return
	}
	h.tcp(ctx, r)
}

func (h handlerFuncs) HandleUDP(ctx context.Context, f *stack.UDPFlow) {
	if h.udp == nil {
		f.Close()
		return
	}
	h.udp(ctx, f)
}

type env struct {
	s    *stack.Stack
	app  *stacktest.App
	peer *tuntest.Peer
	dev  *tuntest.Device
	ctx  context.Context
}

// setup starts a stack over a tuntest pipe and an app stack on its far side.
// ctx bounds the whole test so a broken stack fails instead of hanging
// (generously: the floods in abuse_test.go take tens of seconds under
// -race on a loaded machine).
func setup(t testing.TB, h stack.Handler, tweak func(*stack.Config)) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	dev, peer := tuntest.NewPipe(1500)
	cfg := stack.Config{Device: dev, Handler: h}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := stack.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	app, err := stacktest.NewApp(peer, appV4, appV6)
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("stack Close: %v", err)
		}
		app.Close()
	})
	return &env{s: s, app: app, peer: peer, dev: dev, ctx: ctx}
}

// memEcho stands in for an upstream server reached over an in-memory
// connection with half-close: it echoes everything and closes its write side
// after the client's CloseWrite.
func memEcho() *halfPipe {
	upR, upW := io.Pipe()
	downR, downW := io.Pipe()
	go func() {
		io.Copy(downW, upR)
		downW.Close()
	}()
	return &halfPipe{r: downR, w: upW}
}

type halfPipe struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func (h *halfPipe) Read(p []byte) (int, error)  { return h.r.Read(p) }
func (h *halfPipe) Write(p []byte) (int, error) { return h.w.Write(p) }
func (h *halfPipe) CloseWrite() error           { return h.w.Close() }
func (h *halfPipe) Close() error                { h.w.Close(); return h.r.Close() }

// relay copies both ways, propagating half-close, and returns when both
// directions are done.
func relayPipe(a stack.Conn, b *halfPipe) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(b, a)
		b.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(a, b)
		a.CloseWrite()
	}()
	wg.Wait()
	a.Close()
	b.Close()
}

func echoHandler(t testing.TB, seen chan<- [2]netip.AddrPort) handlerFuncs {
	return handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		if seen != nil {
			seen <- [2]netip.AddrPort{r.Src(), r.Dst()}
		}
		up := memEcho() // "dial" first, then complete the app's handshake
		c, err := r.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			up.Close()
			return
		}
		relayPipe(c, up)
	}}
}

func TestTCPEcho(t *testing.T) {
	for _, dst := range []string{"198.18.0.1:80", "[2001:db8::1]:443"} {
		t.Run(dst, func(t *testing.T) {
			seen := make(chan [2]netip.AddrPort, 1)
			e := setup(t, echoHandler(t, seen), nil)
			d := netip.MustParseAddrPort(dst)
			c, err := e.app.DialTCP(e.ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := testenv.Recv(t, seen, "the addresses the handler saw")
			if got[1] != d {
				t.Errorf("Dst = %v, want %v", got[1], d)
			}
			wantSrc := appV4.Addr()
			if d.Addr().Is6() {
				wantSrc = appV6.Addr()
			}
			if got[0].Addr() != wantSrc || got[0].Port() == 0 {
				t.Errorf("Src = %v, want %v:<port>", got[0], wantSrc)
			}
			if la := c.LocalAddr().(*net.TCPAddr).AddrPort(); la != got[0] {
				t.Errorf("handler Src %v != app's local address %v", got[0], la)
			}
			msg := bytes.Repeat([]byte("hello through the stack "), 10000) // > many segments
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			back, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, msg) {
				t.Fatalf("echo returned %d bytes, want %d identical", len(back), len(msg))
			}
			if st := e.s.Stats(); st.BytesUp < uint64(len(msg)) || st.BytesDown < uint64(len(msg)) || st.TCPTotal != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestTCPRejectIsConnectionRefused(t *testing.T) {
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		if r.Dst().Port() == 81 {
			return // contract broken: neither Accept nor Reject
		}
		r.Reject()
		if _, err := r.Accept(); err == nil {
			t.Error("Accept after Reject succeeded")
		}
	}}
	e := setup(t, h, nil)
	for _, dst := range []string{"198.18.0.1:80", "198.18.0.1:81", "[2001:db8::1]:80"} {
		_, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort(dst))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial %s: err = %v, want connection refused", dst, err)
		}
	}
	if st := e.s.Stats(); st.TCPRejected != 3 || st.TCPOpen != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestTCPHalfCloseBothWays(t *testing.T) {
	done := make(chan error, 1)
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		// App -> handler: app sends then FINs; we must see data then EOF
		// while our direction stays open.
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "question" {
			done <- errors.New("handler read " + string(got) + ": " + errString(err))
			return
		}
		// Handler -> app, after the app's FIN.
		if _, err := c.Write([]byte("answer")); err != nil {
			done <- err
			return
		}
		done <- c.CloseWrite()
	}}
	e := setup(t, h, nil)
	c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "answer" {
		t.Fatalf("app read %q, %v; want \"answer\" then EOF", got, err)
	}
	if err := testenv.Recv(t, done, "the handler's end"); err != nil {
		t.Fatal(err)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestUDPFullCone(t *testing.T) {
	for _, fam := range []struct{ name, a, b, local string }{
		{"v4", "198.18.0.10:53", "203.0.113.7:9999", "10.0.0.2:5000"},
		{"v6", "[2001:db8::10]:53", "[2001:db8:ffff::7]:9999", "[fd00::2]:5000"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			a, b := netip.MustParseAddrPort(fam.a), netip.MustParseAddrPort(fam.b)
			flows := make(chan *stack.UDPFlow, 4)
			h := handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) {
				flows <- f
				<-ctx.Done()
			}}
			e := setup(t, h, nil)
			pc, err := e.app.ListenUDP(netip.MustParseAddrPort(fam.local))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			if _, err := pc.WriteTo([]byte("to A"), net.UDPAddrFromAddrPort(a)); err != nil {
				t.Fatal(err)
			}
			f := testenv.Recv(t, flows, "the UDP flow")
			if f.Src() != netip.MustParseAddrPort(fam.local) {
				t.Fatalf("flow Src = %v", f.Src())
			}
			buf := make([]byte, 2048)
			n, dst, err := f.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "to A" || dst != a {
				t.Fatalf("ReadFrom = %q, %v, %v; want \"to A\" from %v", buf[:n], dst, err, a)
			}
			// A reply from B, which the app never contacted.
			if _, err := f.WriteTo([]byte("from B"), b); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "from B" {
				t.Fatalf("app ReadFrom = %q, %v", buf[:n], err)
			}
			if got := from.(*net.UDPAddr).AddrPort(); got != b {
				t.Fatalf("reply source = %v, want %v", got, b)
			}
			// Same app socket to B: still the same flow.
			if _, err := pc.WriteTo([]byte("to B"), net.UDPAddrFromAddrPort(b)); err != nil {
				t.Fatal(err)
			}
			n, dst, err = f.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "to B" || dst != b {
				t.Fatalf("second ReadFrom = %q, %v, %v", buf[:n], dst, err)
			}
			select {
			case f2 := <-flows:
				t.Fatalf("second flow %v for the same source", f2.Src())
			default:
			}
			if st := e.s.Stats(); st.UDPOpen != 1 || st.UDPTotal != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestUDPFragmentedReply(t *testing.T) {
	flows := make(chan *stack.UDPFlow, 1)
	e := setup(t, handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) { flows <- f; <-ctx.Done() }}, nil)
	pc, err := e.app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5001"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	remote := netip.MustParseAddrPort("198.18.0.10:4000")
	pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(remote))
	f := testenv.Recv(t, flows, "the UDP flow")
	big := make([]byte, 9000)
	for i := range big {
		big[i] = byte(i)
	}
	if _, err := f.WriteTo(big, remote); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 20000)
	pc.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], big) {
		t.Fatalf("app got %d bytes, %v; want the 9000-byte datagram", n, err)
	}
	if _, err := f.WriteTo(make([]byte, 70000), remote); err == nil {
		t.Fatal("WriteTo of 70000 bytes succeeded")
	}
	if _, err := f.WriteTo([]byte("x"), netip.MustParseAddrPort("[2001:db8::1]:53")); err == nil {
		t.Fatal("WriteTo from an IPv6 source to an IPv4 app succeeded")
	}
}

// TestUDPFlowClosedByHandler: the stack keeps no idle timer of its own
// (the Handler's decides); once the Handler closes a flow, the app's next
// datagram from the same source starts a fresh one.
func TestUDPFlowClosedByHandler(t *testing.T) {
	flows := make(chan *stack.UDPFlow, 4)
	h := handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) {
		flows <- f
		buf := make([]byte, 100)
		f.ReadFrom(buf)
		f.Close()
	}}
	e := setup(t, h, nil)
	pc, err := e.app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5002"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.10:53"))
	pc.WriteTo([]byte("one"), dst)
	f1 := testenv.Recv(t, flows, "the UDP flow")
	for e.s.Stats().UDPOpen != 0 {
		select {
		case <-e.ctx.Done():
			t.Fatal("the closed flow stayed open")
		case <-time.After(time.Millisecond):
		}
	}
	if _, err := f1.WriteTo([]byte("late"), netip.MustParseAddrPort("198.18.0.10:53")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo on a closed flow = %v", err)
	}
	// The same source again: a fresh flow.
	pc.WriteTo([]byte("two"), dst)
	f2 := testenv.Recv(t, flows, "the UDP flow")
	if f2 == f1 || f2.Src() != f1.Src() {
		t.Fatalf("new flow %p (%v), old %p", f2, f2.Src(), f1)
	}
}

func TestUDPReadDeadlineAndClose(t *testing.T) {
	flows := make(chan *stack.UDPFlow, 1)
	e := setup(t, handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) { flows <- f; <-ctx.Done() }}, nil)
	pc, err := e.app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5003"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.WriteTo([]byte("0123456789"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.10:53")))
	f := testenv.Recv(t, flows, "the UDP flow")
	small := make([]byte, 4)
	n, _, err := f.ReadFrom(small)
	if n != 4 || !errors.Is(err, io.ErrShortBuffer) {
		t.Fatalf("short read = %d, %v", n, err)
	}
	f.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := f.ReadFrom(small); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom past deadline = %v", err)
	}
	f.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, _, err := f.ReadFrom(small)
		errc <- err
	}()
	f.Close()
	if err := testenv.Recv(t, errc, "the blocked read's end"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom after Close = %v", err)
	}
}

func TestManyConcurrentConnections(t *testing.T) {
	const n = 200
	e := setup(t, echoHandler(t, nil), nil)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)}), uint16(1000+i))
			c, err := e.app.DialTCP(e.ctx, dst)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 3000+i)
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			back, err := io.ReadAll(c)
			if err != nil {
				errc <- err
				return
			}
			if !bytes.Equal(back, msg) {
				errc <- errors.New("echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if st := e.s.Stats(); st.TCPTotal != n {
		t.Errorf("TCPTotal = %d, want %d", st.TCPTotal, n)
	}
}

func TestCloseEndsFlowsAndHandlers(t *testing.T) {
	ended := make(chan string, 2)
	h := handlerFuncs{
		tcp: func(ctx context.Context, r *stack.TCPRequest) {
			c, err := r.Accept()
			if err != nil {
				ended <- "tcp accept failed"
				return
			}
			// Block reading until the stack closes the connection.
			_, err = c.Read(make([]byte, 10))
			ended <- "tcp " + errString(err)
		},
		udp: func(ctx context.Context, f *stack.UDPFlow) {
			buf := make([]byte, 100)
			f.ReadFrom(buf)
			_, _, err := f.ReadFrom(buf)
			ended <- "udp " + errString(err)
		},
	}
	dev, peer := tuntest.NewPipe(1500)
	s, err := stack.New(context.Background(), stack.Config{Device: dev, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	app, err := stacktest.NewApp(peer, appV4)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := app.DialTCP(ctx, netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:6000"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.9:53")))
	// Wait until both flows are open.
	for s.Stats().TCPOpen != 1 || s.Stats().UDPOpen != 1 {
		select {
		case <-ctx.Done():
			t.Fatalf("flows never opened: %+v", s.Stats())
		case <-time.After(time.Millisecond):
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waited for the handlers, so both have reported already.
	for range 2 {
		select {
		case msg := <-ended:
			t.Log(msg)
		default:
			t.Fatal("a handler was still running after Close returned")
		}
	}
	if st := s.Stats(); st.TCPOpen != 0 || st.UDPOpen != 0 {
		t.Errorf("open flows after Close: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := dev.Write([][]byte{make([]byte, 40)}, 16); !errors.Is(err, os.ErrClosed) {
		t.Errorf("device still open after Close: %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dev, _ := tuntest.NewPipe(1500)
	defer dev.Close()
	h := handlerFuncs{}
	for name, cfg := range map[string]stack.Config{
		"no device":     {Handler: h},
		"no handler":    {Device: dev},
		"tiny MTU":      {Device: dev, Handler: h, MTU: 575},
		"bad cc":        {Device: dev, Handler: h, TCP: stack.TCPOptions{CongestionControl: "bbr9"}},
		"tiny buf":      {Device: dev, Handler: h, TCP: stack.TCPOptions{SendBuf: 10}},
		"neg flows":     {Device: dev, Handler: h, MaxUDPFlows: -1},
		"neg handshake": {Device: dev, Handler: h, TCP: stack.TCPOptions{HandshakeTimeout: -time.Second}},
	} {
		if s, err := stack.New(context.Background(), cfg); err == nil {
			s.Close()
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func TestTCPDropSendsNothing(t *testing.T) {
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) { r.Drop() }}
	e := setup(t, h, nil)
	ctx, cancel := context.WithTimeout(e.ctx, 1500*time.Millisecond)
	defer cancel()
	_, err := e.app.DialTCP(ctx, netip.MustParseAddrPort("198.18.0.1:80"))
	if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a dropped SYN: %v, want a timeout (no RST)", err)
	}
	if st := e.s.Stats(); st.TCPRejected == 0 || st.TCPOpen != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestDeviceGoneIsReported: when the device is closed under the stack (its
// interface deleted), Failed fires with the reason; a Close by the owner
// never does.
func TestDeviceGoneIsReported(t *testing.T) {
	e := setup(t, echoHandler(t, nil), nil)
	select {
	case <-e.s.Failed():
		t.Fatal("Failed before anything went wrong")
	default:
	}
	if err := e.s.Err(); err != nil {
		t.Fatalf("Err before failure: %v", err)
	}
	e.dev.Close()
	select {
	case <-e.s.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("closing the device under the stack was not reported")
	}
	if err := e.s.Err(); err == nil || !strings.Contains(err.Error(), "closed or removed") {
		t.Fatalf("Err = %v, want the device closed or removed", err)
	}
}

func TestCloseIsNotAFailure(t *testing.T) {
	dev, _ := tuntest.NewPipe(1500)
	s, err := stack.New(context.Background(), stack.Config{Device: dev, Handler: handlerFuncs{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waits for the packet loops, so a wrong report would be there.
	select {
	case <-s.Failed():
		t.Fatalf("Close was reported as a failure: %v", s.Err())
	default:
	}
}

// TestSystemTCPFallsBack: without a kernel behind the device (tuntest)
// the system TCP self-test gets no SYN-ACK, and with a listener that
// cannot be opened there is nothing to test; either way the stack warns
// and carries TCP itself.
func TestSystemTCPFallsBack(t *testing.T) {
	for name, listen := range map[string]func(string, string) (net.Listener, error){
		"no answer": func(network, _ string) (net.Listener, error) {
			return net.Listen(network, "127.0.0.1:0") // reachable only over loopback, not the device
		},
		"no listener": func(string, string) (net.Listener, error) {
			return nil, errors.New("cannot assign requested address")
		},
	} {
		t.Run(name, func(t *testing.T) {
			dev, _ := tuntest.NewPipe(1500)
			var logs testenv.Buffer
			s, err := stack.New(context.Background(), stack.Config{Device: dev, Handler: handlerFuncs{},
				Logger:    slog.New(slog.NewTextHandler(&logs, nil)),
				SystemTCP: &stack.SystemTCP{Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/15")}, Listen: listen}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.SystemTCP() {
				t.Error("system TCP still on")
			}
			if !strings.Contains(logs.String(), "TCP goes through gVisor instead") {
				t.Errorf("no warning logged:\n%s", logs.String())
			}
		})
	}
}

// SetLinger(0) before Close resets an accepted connection (RST; the app's
// read fails) where a plain Close ends it with a FIN (the app reads EOF):
// the router resets a flow it accepted to read its first bytes when the
// upstream then refuses it.
func TestTCPAcceptedConnReset(t *testing.T) {
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		io.ReadFull(c, make([]byte, 1))
		if r.Dst().Port() == 81 {
			if err := c.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
				t.Error(err)
			}
		}
		c.Close()
	}}
	e := setup(t, h, nil)
	for port, wantEOF := range map[uint16]bool{80: true, 81: false} {
		c, err := e.app.DialTCP(e.ctx, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		_, err = c.Read(make([]byte, 1))
		if (err == io.EOF) != wantEOF || err == nil {
			t.Errorf("port %d: app read %v; want EOF %v", port, err, wantEOF)
		}
		c.Close()
	}
}

// WaitRead waits for a datagram without taking it (a caller takes a buffer
// only then), returns at once while one is queued, and fails as ReadFrom
// does past the deadline and after Close.
func TestUDPWaitRead(t *testing.T) {
	flows := make(chan *stack.UDPFlow, 1)
	e := setup(t, handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) { flows <- f; <-ctx.Done() }}, nil)
	pc, err := e.app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5004"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.10:5004"))
	pc.WriteTo([]byte("one"), dst)
	f := testenv.Recv(t, flows, "the UDP flow")
	buf := make([]byte, 16)
	for _, want := range []string{"one", "two"} {
		if err := f.WaitRead(); err != nil {
			t.Fatalf("WaitRead with %q queued: %v", want, err)
		}
		if err := f.WaitRead(); err != nil { // nothing taken
			t.Fatalf("second WaitRead with %q queued: %v", want, err)
		}
		if n, _, err := f.ReadFrom(buf); err != nil || string(buf[:n]) != want {
			t.Fatalf("ReadFrom after WaitRead = %q, %v; want %q", buf[:n], err, want)
		}
		if want == "one" {
			waited := make(chan error, 1)
			go func() { waited <- f.WaitRead() }()
			select {
			case err := <-waited:
				t.Fatalf("WaitRead returned %v with nothing queued", err)
			case <-time.After(50 * time.Millisecond):
			}
			pc.WriteTo([]byte("two"), dst)
			if err := testenv.Recv(t, waited, "WaitRead's return"); err != nil {
				t.Fatalf("WaitRead: %v", err)
			}
		}
	}
	f.SetReadDeadline(time.Now().Add(-time.Second))
	if err := f.WaitRead(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitRead past deadline = %v", err)
	}
	f.SetReadDeadline(time.Time{})
	waited := make(chan error, 1)
	go func() { waited <- f.WaitRead() }()
	f.Close()
	if err := testenv.Recv(t, waited, "WaitRead's return"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WaitRead after Close = %v", err)
	}
}

// A flow can be read without a goroutine waiting in ReadFrom: TryReadFrom
// takes what is queued and never waits, NotifyRead calls back once a
// datagram is queued (at once if one is) and when the flow closes, and a
// Handler that detached may return while the flow lives on: Stack.Close
// closes the flow and waits for the detached flow's done.
func TestUDPNotifyReadAndDetach(t *testing.T) {
	type detached struct {
		f    *stack.UDPFlow
		done func()
	}
	flows := make(chan detached, 1)
	returned := make(chan struct{})
	e := setup(t, handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) {
		flows <- detached{f, f.Detach()}
		close(returned)
	}}, nil)
	pc, err := e.app.ListenUDP(netip.MustParseAddrPort("10.0.0.2:5005"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := netip.MustParseAddrPort("198.18.0.10:5005")
	pc.WriteTo([]byte("one"), net.UDPAddrFromAddrPort(dst))
	d := testenv.Recv(t, flows, "the UDP flow")
	f := d.f
	testenv.Recv(t, returned, "the handler's return")
	buf := make([]byte, 64)
	if n, to, ok, err := f.TryReadFrom(buf); !ok || err != nil || string(buf[:n]) != "one" || to != dst {
		t.Fatalf("TryReadFrom with one queued = %q to %v, %v, %v; want \"one\" to %v", buf[:n], to, ok, err, dst)
	}
	if n, _, ok, err := f.TryReadFrom(buf); ok || err != nil || n != 0 {
		t.Fatalf("TryReadFrom with nothing queued = %d, %v, %v; want nothing, no error", n, ok, err)
	}
	notified := make(chan struct{}, 4)
	notify := func() { notified <- struct{}{} }
	f.NotifyRead(notify)
	select {
	case <-notified:
		t.Fatal("NotifyRead called back with nothing queued")
	case <-time.After(50 * time.Millisecond):
	}
	pc.WriteTo([]byte("two"), net.UDPAddrFromAddrPort(dst))
	select {
	case <-notified:
	case <-time.After(10 * time.Second):
		t.Fatal("NotifyRead never called back after a datagram")
	}
	f.NotifyRead(notify) // "two" is queued: at once
	select {
	case <-notified:
	default:
		t.Fatal("NotifyRead with a datagram queued did not call back at once")
	}
	if n, _, ok, err := f.TryReadFrom(buf); !ok || err != nil || string(buf[:n]) != "two" {
		t.Fatalf("TryReadFrom after the notification = %q, %v, %v", buf[:n], ok, err)
	}
	if st := e.s.Stats(); st.UDPOpen != 1 {
		t.Fatalf("UDPOpen %d with the detached flow open", st.UDPOpen)
	}

	f.NotifyRead(notify)
	closed := make(chan error, 1)
	go func() { closed <- e.s.Close() }()
	select {
	case <-notified:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the stack did not call the flow's NotifyRead back")
	}
	if _, _, ok, err := f.TryReadFrom(buf); ok || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("TryReadFrom after the stack closed the flow = %v, %v; want net.ErrClosed", ok, err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Stack.Close returned (%v) before the detached flow's done", err)
	case <-time.After(50 * time.Millisecond):
	}
	d.done()
	d.done() // once only
	if err := testenv.Recv(t, closed, "Stack.Close's return"); err != nil {
		t.Fatalf("Stack.Close: %v", err)
	}
}
