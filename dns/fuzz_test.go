package dns

import (
	"context"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzHandle feeds arbitrary datagrams to a server with every path wired:
// a small pool (so eviction happens), a filter, a decider and forwarders that
// answer, fail or return garbage depending on the query. The seed corpus is
// in testdata/fuzz/FuzzHandle.
func FuzzHandle(f *testing.F) {
	clk := newClock()
	pool := mustPool(f, "10.0.0.0/28", "fd00::/120", PoolOptions{TTL: time.Second, Now: clk.Now})
	filter, err := NewFilter([]string{"+.lan", "*.example.com", ".local"})
	if err != nil {
		f.Fatal(err)
	}
	upstream := func(q []byte) ([]byte, error) {
		switch q[len(q)-1] % 4 {
		case 0:
			return answerWith(30, "192.0.2.1")(q)
		case 1:
			return q, nil // not a response
		case 2:
			return []byte{q[0], q[1], 0x81, 0x80}, nil // short
		}
		return nil, context.DeadlineExceeded
	}
	srv, err := NewServer(Config{
		Pool:   pool,
		Filter: filter,
		Direct: &fakeResolver{answer: upstream},
		Proxy:  &fakeResolver{answer: upstream},
		Decide: func(h string) Route { return Route(len(h) % 4) },
		Now:    clk.Now,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		clk.Add(300 * time.Millisecond)
		for _, udp := range []bool{true, false} {
			resp, err := srv.handle(context.Background(), q, udp)
			if resp == nil {
				if err == nil {
					t.Fatal("dropped without a reason")
				}
				if len(q) >= 12 && q[2]&0x80 == 0 {
					t.Fatalf("dropped a query with a header: %v", err)
				}
				continue
			}
			var p dnsmessage.Parser
			h, perr := p.Start(resp)
			if perr != nil {
				t.Fatalf("unparsable response %x: %v", resp, perr)
			}
			if !h.Response || h.ID != uint16(q[0])<<8|uint16(q[1]) {
				t.Fatalf("response header %+v for query ID %x", h, q[:2])
			}
			if udp && len(resp) > 65535 {
				t.Fatalf("response of %d bytes", len(resp))
			}
		}
	})
}
