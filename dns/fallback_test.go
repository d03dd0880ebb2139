package dns

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// stubResolver answers with a fixed rcode, or fails, and counts calls.
type stubResolver struct {
	rcode dnsmessage.RCode
	err   error
	calls atomic.Int32
}

func (s *stubResolver) Exchange(_ context.Context, q []byte) ([]byte, error) {
	s.calls.Add(1)
	if s.err != nil {
		return nil, s.err
	}
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil, err
	}
	h.Response, h.RCode = true, s.rcode
	b := dnsmessage.NewBuilder(nil, h)
	return b.Finish()
}

func fallbackQuery(t *testing.T) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("example.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestFallbackMovesOnAndRemembers(t *testing.T) {
	dead := &stubResolver{err: errors.New("i/o timeout")}
	broken := &stubResolver{rcode: dnsmessage.RCodeServerFailure}
	good := &stubResolver{rcode: dnsmessage.RCodeSuccess}
	f := NewFallback(dead, broken, good)
	q := fallbackQuery(t)
	a, err := f.Exchange(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if rc, _ := rcode(a); rc != dnsmessage.RCodeSuccess {
		t.Fatalf("rcode %v, want success from the third resolver", rc)
	}
	// The next query goes straight to the one that answered.
	if _, err := f.Exchange(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	if dead.calls.Load() != 1 || broken.calls.Load() != 1 || good.calls.Load() != 2 {
		t.Errorf("calls dead=%d broken=%d good=%d, want 1 1 2", dead.calls.Load(), broken.calls.Load(), good.calls.Load())
	}
}

func TestFallbackNXDOMAINIsAnAnswer(t *testing.T) {
	nx := &stubResolver{rcode: dnsmessage.RCodeNameError}
	other := &stubResolver{rcode: dnsmessage.RCodeSuccess}
	a, err := NewFallback(nx, other).Exchange(context.Background(), fallbackQuery(t))
	if err != nil {
		t.Fatal(err)
	}
	if rc, _ := rcode(a); rc != dnsmessage.RCodeNameError || other.calls.Load() != 0 {
		t.Errorf("rcode %v, second resolver called %d times; want NXDOMAIN from the first and no fallback", rc, other.calls.Load())
	}
}

func TestFallbackAllFail(t *testing.T) {
	f := NewFallback(&stubResolver{err: errors.New("refused one")}, &stubResolver{err: errors.New("refused two")})
	_, err := f.Exchange(context.Background(), fallbackQuery(t))
	if err == nil || !strings.Contains(err.Error(), "resolver 1: refused one") || !strings.Contains(err.Error(), "resolver 2: refused two") {
		t.Fatalf("err = %v, want both failures named", err)
	}
	// Every resolver answered SERVFAIL: the client gets SERVFAIL.
	f = NewFallback(&stubResolver{rcode: dnsmessage.RCodeServerFailure}, &stubResolver{rcode: dnsmessage.RCodeRefused})
	a, err := f.Exchange(context.Background(), fallbackQuery(t))
	if err != nil {
		t.Fatal(err)
	}
	if rc, _ := rcode(a); rc != dnsmessage.RCodeRefused {
		t.Errorf("rcode %v, want the last answer (REFUSED)", rc)
	}
}

func TestFallbackStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	first := &stubResolver{err: errors.New("timeout")}
	second := &stubResolver{rcode: dnsmessage.RCodeSuccess}
	cancel()
	if _, err := NewFallback(first, second).Exchange(ctx, fallbackQuery(t)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if first.calls.Load()+second.calls.Load() != 0 {
		t.Error("a resolver was asked after the context ended")
	}
}
