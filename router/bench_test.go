package router

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socksclient"
	"github.com/tunsocks/tunsocks/socksserver"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/stack/stacktest"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// BenchmarkSniff measures what sniffing costs a TLS flow through the real
// netstack: the app connects to an address, sends a ClientHello (captured
// from crypto/tls) and waits for the upstream's first byte. "off" is
// dial-before-accept (no SniffConfig); "on" accepts, reads the
// ClientHello, decides with its name and dials the name. The upstream is a
// loopback TCP server that answers one byte once it has the ClientHello.
//
// ns/op is one flow after another (its inverse is the serial connection
// rate); first-byte-µs is the app's wait from connect to the upstream's
// first byte; the parallel variants report flows/s with 8 flows at once.
//
//	go test -run '^$' -bench Sniff -benchtime 2000x ./router/
func BenchmarkSniff(b *testing.B) {
	hello := captureClientHello(b, "bench.example")
	upstream := testenv.TCPServer(b, "tcp", "127.0.0.1:0", func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			return
		}
		c.Write([]byte{1})
		io.Copy(io.Discard, c)
	})
	out := &dialOutbound{addr: upstream}
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			app := benchPipeline(b, out, mode == "on")
			dst := netip.MustParseAddrPort("203.0.113.1:443")
			var wait time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if err := benchFlow(app, dst, hello); err != nil {
					b.Fatal(err)
				}
				wait += time.Since(start)
			}
			b.ReportMetric(float64(wait.Microseconds())/float64(b.N), "first-byte-µs")
		})
		b.Run(mode+"-parallel", func(b *testing.B) {
			app := benchPipeline(b, out, mode == "on")
			dst := netip.MustParseAddrPort("203.0.113.1:443")
			b.SetParallelism(4) // 8 flows at once on 2 CPUs
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := benchFlow(app, dst, hello); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "flows/s")
		})
	}
}

// benchFlow is one flow: connect, send hello, read the upstream's byte.
func benchFlow(app *stacktest.App, dst netip.AddrPort, hello []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := app.DialTCP(ctx, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(hello); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 1))
	return err
}

// benchPipeline runs a router over a stack over an in-memory TUN, with an
// app stack on the far side.
func benchPipeline(b *testing.B, out Outbound, sniff bool) *stacktest.App {
	b.Helper()
	cfg := Config{Decide: Static(out)}
	if sniff {
		cfg.Sniff = &SniffConfig{Want: func(*rules.Metadata) bool { return true }, OverrideDestination: true}
	}
	return benchRouterStack(b, cfg)
}

// benchRouterStack runs a router of cfg over a stack over an in-memory
// TUN and returns the app stack on the far side; all of it closes when
// the benchmark ends.
func benchRouterStack(b *testing.B, cfg Config) *stacktest.App {
	b.Helper()
	_, _, app := routerStack(b, cfg, nil)
	return app
}

// routerStack runs a router of cfg over a stack (its Config changed by
// mod when not nil) over an in-memory TUN and returns them and the app
// stack on the far side; all of it closes when the test ends.
func routerStack(tb testing.TB, cfg Config, mod func(*stack.Config)) (*Router, *stack.Stack, *stacktest.App) {
	tb.Helper()
	r, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dev, peer := tuntest.NewPipe(1500)
	scfg := stack.Config{Device: dev, Handler: r}
	if mod != nil {
		mod(&scfg)
	}
	st, err := stack.New(ctx, scfg)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	app, err := stacktest.NewApp(peer, netip.MustParsePrefix("10.0.0.2/24"))
	if err != nil {
		st.Close()
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		st.Close()
		app.Close()
		cancel()
	})
	return r, st, app
}

// dialOutbound dials one loopback address whatever it is asked for.
type dialOutbound struct{ addr string }

func (o *dialOutbound) Name() string { return "bench" }
func (o *dialOutbound) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, o.addr)
}
func (o *dialOutbound) ListenPacket(context.Context) (PacketConn, error) {
	return nil, ErrUDPUnsupported
}

// captureClientHello returns what crypto/tls's client sends first.
func captureClientHello(b *testing.B, name string) []byte {
	b.Helper()
	a, c := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := c.Read(buf)
	if err != nil {
		b.Fatal(err)
	}
	c.Close()
	a.Close()
	wg.Wait()
	return buf[:n]
}

// BenchmarkFlowSOCKS is benchtool's connection-rate row in one process:
// the app connects through the netstack and the router to a SOCKS5
// server (socksserver, on loopback) that reaches a TCP echo server; it
// writes one byte, reads it back and closes. allocs/op counts every
// allocation of the flow, the SOCKS server's and the app's included;
// -memprofile with -memprofilerate 1 attributes them.
//
//	go test -run '^$' -bench FlowSOCKS -benchmem -benchtime 2000x ./router/
func BenchmarkFlowSOCKS(b *testing.B) {
	echo := testenv.TCPEcho(b, "tcp", "127.0.0.1:0")
	srv, err := socksserver.New(socksserver.Config{})
	if err != nil {
		b.Fatal(err)
	}
	sc, err := socksclient.Parse("socks5://"+testenv.Serve(b, srv), nil)
	if err != nil {
		b.Fatal(err)
	}
	poller, err := relay.NewPoller()
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { poller.Close() })
	out := &socksOutbound{c: sc, addr: echo}
	app := benchRouterStack(b, Config{Decide: Static(out), Poller: poller})
	dst := netip.MustParseAddrPort("203.0.113.1:7")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := benchFlow(app, dst, []byte{1}); err != nil {
			b.Fatal(err)
		}
	}
}

// socksOutbound dials one address through a SOCKS client whatever it is
// asked for.
type socksOutbound struct {
	c    *socksclient.Client
	addr string
}

func (o *socksOutbound) Name() string { return "socks" }
func (o *socksOutbound) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	return o.c.DialContext(ctx, network, o.addr)
}
func (o *socksOutbound) ListenPacket(context.Context) (PacketConn, error) {
	return nil, ErrUDPUnsupported
}
