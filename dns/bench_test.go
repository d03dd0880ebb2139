package dns

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// BenchmarkHandleFakeA: an A query for a name that already has a fake
// address, the hot path of fake-IP mode.
func BenchmarkHandleFakeA(b *testing.B) {
	e := newEnv(b, false, nil)
	q := query(b, 1, "www.example.com.", dnsmessage.TypeA, 0)
	ctx := context.Background()
	if resp, err := e.srv.Handle(ctx, q); err != nil || resp == nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.srv.Handle(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandleFakeANewNames: every query allocates a mapping, recycling
// the least recently used once the pool is full.
func BenchmarkHandleFakeANewNames(b *testing.B) {
	e := newEnv(b, false, nil)
	qs := make([][]byte, 100_000)
	for i := range qs {
		qs[i] = query(b, 1, fmt.Sprintf("h%d.example.com.", i), dnsmessage.TypeA, 0)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.clk.Add(time.Millisecond) // the 3s TTL passes every 3000 names
		resp, _ := e.srv.Handle(ctx, qs[i%len(qs)])
		if resp[3]&0xf != 0 {
			b.Fatalf("rcode %d", resp[3]&0xf)
		}
		i++
	}
}

// BenchmarkHandleCached: a forwarded answer served from the cache.
func BenchmarkHandleCached(b *testing.B) {
	e := newEnv(b, false, nil)
	q := query(b, 1, "www.proxy.test.", dnsmessage.TypeA, 0)
	ctx := context.Background()
	e.srv.Handle(ctx, q)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.srv.Handle(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	if len(e.proxy.calls()) != 1 {
		b.Fatalf("cache missed: %d calls", len(e.proxy.calls()))
	}
}

func BenchmarkFilterMatch(b *testing.B) {
	var pats []string
	for i := range 1000 {
		pats = append(pats, fmt.Sprintf("+.d%d.example", i), fmt.Sprintf("*.w%d.example", i))
	}
	f, err := NewFilter(pats)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		f.Match("a.b.d500.example")
		f.Match("miss.example.org")
	}
}

// BenchmarkPoolMemory reports the heap one fake-IP mapping costs
// (bytes/mapping), with names of a typical length (~24 bytes), in a full
// default pool (65,535 mappings). Run:
//
//	go test -run '^$' -bench PoolMemory -benchtime 1x ./dns
func BenchmarkPoolMemory(b *testing.B) {
	const n = MaxPoolSize
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("host%05d.cdn.example.com", i)
	}
	var perMapping float64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		p, err := NewPool(netip.Prefix{}, netip.Prefix{}, PoolOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range names {
			if !p.Lookup(name, false).IsValid() {
				b.Fatal("no address")
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if v4, _ := p.Len(); v4 != n {
			b.Fatalf("%d mappings", v4)
		}
		// The names themselves were allocated before: count them in.
		nameBytes := 0
		for _, name := range names {
			nameBytes += len(name)
		}
		perMapping += (float64(after.HeapAlloc) - float64(before.HeapAlloc) + float64(nameBytes)) / n
		runtime.KeepAlive(p)
	}
	b.ReportMetric(perMapping/float64(b.N), "bytes/mapping")
	b.ReportMetric(0, "ns/op")
}
