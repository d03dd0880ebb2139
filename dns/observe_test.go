package dns

import (
	"context"
	"errors"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// TestServerObserve: every query is reported once with its type and the
// kind of answer it got, for the DNS metrics.
func TestServerObserve(t *testing.T) {
	var mu sync.Mutex
	var got []string
	e := newEnv(t, false, func(c *Config) {
		c.Observe = func(qtype, answer string) {
			mu.Lock()
			got = append(got, qtype+" "+answer)
			mu.Unlock()
		}
	})
	nx := func(q []byte) ([]byte, error) {
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil {
			return nil, err
		}
		m.Header.Response, m.Header.RCode, m.Additionals = true, dnsmessage.RCodeNameError, nil
		return m.Pack()
	}
	ctx := context.Background()
	e.srv.Handle(ctx, query(t, 1, "www.example.com.", dnsmessage.TypeA, 0))     // fake
	e.srv.Handle(ctx, query(t, 2, "www.example.com.", dnsmessage.TypeAAAA, 0))  // fake
	e.srv.Handle(ctx, query(t, 3, "a.direct.test.", dnsmessage.TypeA, 0))       // forwarded
	e.srv.Handle(ctx, query(t, 4, "a.proxy.test.", dnsmessage.TypeTXT, 0))      // forwarded through the proxy
	e.srv.Handle(ctx, query(t, 5, "b.example.com.", dnsmessage.TypeHTTPS, 0))   // not A/AAAA: forwarded
	e.srv.Handle(ctx, query(t, 8, "x.example.com.", dnsmessage.Type(65280), 0)) // a private type
	e.direct.answer = nx
	e.srv.Handle(ctx, query(t, 6, "gone.direct.test.", dnsmessage.TypeA, 0))
	e.proxy.answer = func([]byte) ([]byte, error) { return nil, errors.New("down") }
	e.srv.Handle(ctx, query(t, 7, "c.proxy.test.", dnsmessage.TypeMX, 0))
	e.srv.Handle(ctx, []byte{1, 2, 3}) // garbage
	want := []string{"A fakeip", "AAAA fakeip", "A real", "TXT real", "HTTPS real", "other real", "A nxdomain", "MX error", "other error"}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("observed %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("query %d: observed %q, want %q", i+1, got[i], want[i])
		}
	}
}

func TestPoolCap(t *testing.T) {
	p := mustPool(t, "198.18.0.0/24", DefaultIPv6Range, PoolOptions{Size: 100})
	if v4, v6 := p.Cap(); v4 != 100 || v6 != 100 {
		t.Errorf("Cap = %d, %d; want 100, 100", v4, v6)
	}
	p = mustPool(t, "198.18.0.0/24", "", PoolOptions{})
	if v4, v6 := p.Cap(); v4 < 200 || v4 > 256 || v6 != 0 {
		t.Errorf("Cap of a /24 without IPv6 = %d, %d", v4, v6)
	}
}
