package dns

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/net/dns/dnsmessage"
)

// Fallback is a Resolver over several upstream resolvers, tried in turn.
// An exchange that fails (timeout, network error, malformed answer) or
// that the upstream answers with SERVFAIL or REFUSED moves on to the next
// resolver, as a stub resolver does with the servers in resolv.conf. The
// resolver that answered last is tried first next time, so a dead first
// nameserver costs one timeout, not one per query.
type Fallback struct {
	rs   []Resolver
	pref atomic.Int32 // index of the resolver to try first
}

// NewFallback returns a Fallback over rs, which must not be empty. With one
// resolver it behaves exactly like that resolver.
func NewFallback(rs ...Resolver) *Fallback {
	if len(rs) == 0 {
		panic("dns: NewFallback without resolvers")
	}
	return &Fallback{rs: rs}
}

// Exchange implements Resolver.
func (f *Fallback) Exchange(ctx context.Context, q []byte) ([]byte, error) {
	start := int(f.pref.Load())
	var errs []error
	var lastAnswer []byte // a SERVFAIL/REFUSED answer, if every resolver failed
	for i := range f.rs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		k := (start + i) % len(f.rs)
		a, err := f.rs[k].Exchange(ctx, q)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolver %d: %w", k+1, err))
			continue
		}
		if rc, ok := rcode(a); ok && (rc == dnsmessage.RCodeServerFailure || rc == dnsmessage.RCodeRefused) && len(f.rs) > 1 {
			lastAnswer = a
			errs = append(errs, fmt.Errorf("resolver %d: answered %v", k+1, rc))
			continue
		}
		if k != start {
			f.pref.Store(int32(k))
		}
		return a, nil
	}
	if lastAnswer != nil {
		// Every resolver failed, some with an answer: pass the last one
		// on, so the client sees SERVFAIL/REFUSED rather than silence.
		return lastAnswer, nil
	}
	return nil, errors.Join(errs...)
}

// rcode reads the response code from a DNS message header.
func rcode(msg []byte) (dnsmessage.RCode, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return 0, false
	}
	return h.RCode, true
}
