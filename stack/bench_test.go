package stack_test

import (
	"context"
	"io"
	"net/netip"
	"testing"

	"github.com/tunsocks/tunsocks/stack"
)

// BenchmarkTCPThroughput measures app -> handler bulk TCP over the in-memory
// pipe: both netstacks, the link endpoint's batching and the device copies.
// Run: go test -run '^$' -bench TCPThroughput ./stack/
func BenchmarkTCPThroughput(b *testing.B) {
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
