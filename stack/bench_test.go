package stack_test

import (
	"context"
	"io"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/stack"
)

// BenchmarkTCPThroughput measures app -> handler bulk TCP over the in-memory
// pipe: both netstacks, the link endpoint's batching and the device copies.
// "verify": the device vouches for no checksum (a TUN without offload), so
// the link endpoint verifies every segment's; "validated": the device
// vouches for all (what the Linux TUN with offload reports for a local
// app's traffic).
// Run: go test -run '^$' -bench TCPThroughput ./stack/
func BenchmarkTCPThroughput(b *testing.B) {
	for _, validated := range []bool{false, true} {
		name := "verify"
		if validated {
			name = "validated"
		}
		b.Run(name, func(b *testing.B) { benchTCPThroughput(b, validated) })
	}
}

func benchTCPThroughput(b *testing.B, validated bool) {
	got := make(chan int64, 1)
	h := handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}}
	e := setup(b, h, nil)
	e.dev.SetValidated(validated)
	c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:5201"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-got; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("handler received %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
}

// BenchmarkUDPIdleFlowMemory reports what one idle UDP flow costs the
// stack: b.N flows, each opened by one datagram that its Handler read, then
// left waiting in ReadFrom (as the router's does between datagrams).
// heap-B/flow is the stack's own memory per flow (the flow, its table
// entries, its queue, channels and timers); handler-stack-B/flow is the
// goroutine the Handler runs on, for scale.
// Run: go test -run '^$' -bench UDPIdleFlowMemory -benchtime 5000x ./stack/
func BenchmarkUDPIdleFlowMemory(b *testing.B) {
	read := make(chan struct{}, 1024)
	h := handlerFuncs{udp: func(ctx context.Context, f *stack.UDPFlow) {
		buf := make([]byte, 64)
		f.ReadFrom(buf)
		read <- struct{}{}
		f.ReadFrom(buf) // idle until Close
	}}
	e := setup(b, h, func(c *stack.Config) {
		c.MaxUDPFlows, c.MaxUDPFlowsPerSource, c.NewUDPFlowRate = b.N, b.N, 1<<30
	})
	dst := netip.MustParseAddrPort("198.18.0.10:53")
	pkts := make([][]byte, b.N)
	for i := range pkts {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 4000)
		pkts[i] = rawUDP(b, src, dst, "hello")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		if err := e.peer.InjectContext(e.ctx, pkts[i]); err != nil {
			b.Fatal(err)
		}
		pkts[i] = nil
	}
	for range b.N {
		select {
		case <-read:
		case <-e.ctx.Done():
			b.Fatalf("flows never all opened: %+v", e.s.Stats())
		}
	}
	b.StopTimer()
	time.Sleep(10 * time.Millisecond) // let the last handlers park in ReadFrom
	runtime.GC()
	runtime.ReadMemStats(&after)
	if st := e.s.Stats(); st.UDPOpen != int64(b.N) {
		b.Fatalf("%d flows open, want %d", st.UDPOpen, b.N)
	}
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/flow")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/float64(b.N), "handler-stack-B/flow")
}
