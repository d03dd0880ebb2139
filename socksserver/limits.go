package socksserver

import (
	"container/list"
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// clientKey is the unit per-client budgets count in: an IPv4 address, or
// the /64 of an IPv6 address (one host commonly holds a whole /64).
type clientKey = netip.Prefix

func keyOf(a netip.Addr) clientKey {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

// handshakes tracks the connections still in their handshake, oldest first,
// in total and per client, and sheds the oldest when a budget is full.
//
// The total budget is hard: at it the oldest handshake of all is closed.
// A client's budget sheds only handshakes that have gone stale (lasted
// stale or more): a client that opens many connections at once (another
// tunsocks carrying a whole desktop through this server) has them all
// in their handshake for a few round trips, and none of them is closed
// for it; a client whose sockets stay silent loses the oldest of them to
// each new one.
type handshakes struct {
	max, perClient int           // <= 0: unlimited
	stale          time.Duration // see above

	mu       sync.Mutex
	all      list.List // of *conn, oldest first
	byClient map[clientKey]*list.List
}

// add enters c, accepted at now, and returns the connections it displaced:
// the oldest handshake of its client when the client's budget is full and
// that handshake is stale, then the oldest of all when the total is full.
// The caller closes them.
func (h *handshakes) add(c *conn, now time.Time) (shed []*conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byClient == nil {
		h.byClient = map[clientKey]*list.List{}
	}
	cl := h.byClient[c.key]
	if cl == nil {
		cl = list.New()
		h.byClient[c.key] = cl
	}
	if h.perClient > 0 && cl.Len() >= h.perClient {
		if old := cl.Front().Value.(*conn); now.Sub(old.start) >= h.stale {
			h.removeLocked(old)
			shed = append(shed, old)
		}
	}
	if h.max > 0 && h.all.Len() >= h.max {
		old := h.all.Front().Value.(*conn)
		h.removeLocked(old)
		shed = append(shed, old)
	}
	if h.byClient[c.key] == nil { // removed with its last handshake above
		h.byClient[c.key] = cl
	}
	c.hsAll = h.all.PushBack(c)
	c.hsClient = cl.PushBack(c)
	return shed
}

// done takes c out; it reports false when c was already out (shed).
func (h *handshakes) done(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.removeLocked(c)
}

func (h *handshakes) removeLocked(c *conn) bool {
	if c.hsAll == nil {
		return false
	}
	h.all.Remove(c.hsAll)
	c.hsAll = nil
	if cl := h.byClient[c.key]; cl != nil {
		cl.Remove(c.hsClient)
		if cl.Len() == 0 {
			delete(h.byClient, c.key)
		}
	}
	c.hsClient = nil
	return true
}

// len returns the handshakes in progress.
func (h *handshakes) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.all.Len()
}

// staleHandshake is when a handshake counts as stale for its client's
// budget: a SOCKS handshake takes a few round trips, and a client that has
// not finished it in 2 s is slow or silent. It is at most half the
// handshake timeout.
const staleHandshake = 2 * time.Second

// tallyEvery is how often a tally writes a line while its events go on.
const tallyEvery = 10 * time.Second

// tally turns a stream of like events (refused connections, failed
// authentications) into a few log lines: the first event after a quiet
// period is logged at once, with its details; the ones that follow within
// tallyEvery are counted, and written as one line per period while they
// last. A flood costs one line every 10 s, not one per event.
type tally struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	every time.Duration

	mu      sync.Mutex
	n       int64 // events since the last line
	total   int64
	clients map[clientKey]struct{} // distinct clients since the last line (capped)
	last    []any                  // the latest event's attributes
	timer   *time.Timer            // set while a period is open
}

// maxTallyClients caps the distinct clients a tally counts per period.
const maxTallyClients = 4096

func newTally(log *slog.Logger, level slog.Level, msg string) *tally {
	return &tally{log: log, level: level, msg: msg, every: tallyEvery}
}

// add records one event by client; attrs describe it.
func (t *tally) add(client netip.Addr, attrs ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total++
	if t.timer == nil {
		t.log.Log(context.Background(), t.level, t.msg, append([]any{"client", client.String()}, attrs...)...)
		t.timer = time.AfterFunc(t.every, t.flush)
		return
	}
	t.n++
	if t.clients == nil {
		t.clients = map[clientKey]struct{}{}
	}
	if len(t.clients) < maxTallyClients {
		t.clients[keyOf(client)] = struct{}{}
	}
	t.last = append([]any{"last_client", client.String()}, attrs...)
}

// flush writes the line for the period that ends, and closes the period
// when it saw no event.
func (t *tally) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil {
		return
	}
	if t.n == 0 {
		t.timer = nil
		return
	}
	t.writeLocked()
	t.timer.Reset(t.every)
}

func (t *tally) writeLocked() {
	args := append([]any{"repeated", t.n, "clients", len(t.clients), "total", t.total}, t.last...)
	t.log.Log(context.Background(), t.level, t.msg+" (repeated)", args...)
	t.n = 0
	clear(t.clients)
	t.last = nil
}

// stop writes what is counted and closes the period.
func (t *tally) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	if t.n > 0 {
		t.writeLocked()
	}
}

// Authentication throttling defaults (Config.AuthFailureLimit and
// AuthFailureDelay).
const (
	// DefaultAuthFailureLimit is how many failed authentications a client
	// address may make in a burst; the allowance refills at this many per
	// minute.
	DefaultAuthFailureLimit = 10
	// DefaultAuthFailureDelay is the delay before the reply to a client
	// address's first recent failed authentication; it doubles with each
	// further one, up to MaxAuthFailureDelay.
	DefaultAuthFailureDelay = 250 * time.Millisecond
	// MaxAuthFailureDelay caps the delay before a failure reply; a client
	// over its limit waits this long to be refused.
	MaxAuthFailureDelay = 4 * time.Second
	// maxAuthClients bounds the client addresses the limiter remembers.
	maxAuthClients = 16384
)

// authLimiter slows and limits failed authentications per client address,
// as a leaky bucket: each failure adds 1 to the client's level, the level
// drains at limit per minute, and a client whose level has reached limit is
// refused without its password being checked until it drains.
type authLimiter struct {
	limit int           // <= 0: no limit
	delay time.Duration // <= 0: no delay
	now   func() time.Time

	mu sync.Mutex
	// full is when a client's level drains to zero ("theoretical arrival
	// time" of a leaky bucket); a client absent or in the past has level 0.
	full map[clientKey]time.Time
}

// interval is the time one failure takes to drain.
func (l *authLimiter) interval() time.Duration {
	if l.limit <= 0 {
		return time.Minute / DefaultAuthFailureLimit
	}
	return time.Minute / time.Duration(l.limit)
}

// level returns the client's recent failures (rounded up).
func (l *authLimiter) levelLocked(k clientKey, now time.Time) int {
	end, ok := l.full[k]
	if !ok || !end.After(now) {
		return 0
	}
	iv := l.interval()
	return int((end.Sub(now) + iv - 1) / iv)
}

// authResult is the outcome of authLimiter.check.
type authResult int

const (
	authOK      authResult = iota
	authFailed             // checked and wrong
	authBlocked            // not checked: the client is over its limit
)

// check runs ok, the password check, for client k unless k is over its
// limit, and records a failure. It returns the outcome and how long to
// wait before a failure reply. The check runs under the limiter's lock (it
// takes a microsecond), so concurrent guesses cannot overshoot the limit.
//
// A failure waits delay << (k's failures before it), at most
// MaxAuthFailureDelay; a blocked attempt waits as long as a failure at the
// limit would, and keeps k's level full: an address that keeps trying
// stays blocked until it stops for a while.
func (l *authLimiter) check(k clientKey, ok func() bool) (authResult, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lvl := l.levelLocked(k, now)
	if l.limit > 0 && lvl >= l.limit {
		l.full[k] = now.Add(time.Duration(l.limit) * l.interval())
		return authBlocked, l.delayFor(l.limit)
	}
	if ok() {
		return authOK, 0
	}
	if l.full == nil {
		l.full = map[clientKey]time.Time{}
	}
	if _, ok := l.full[k]; !ok && len(l.full) >= maxAuthClients {
		l.sweepLocked(now)
	}
	start := now
	if end, ok := l.full[k]; ok && end.After(now) {
		start = end
	}
	l.full[k] = start.Add(l.interval())
	return authFailed, l.delayFor(lvl)
}

// delayFor is the wait before the failure reply to a client with lvl
// earlier recent failures.
func (l *authLimiter) delayFor(lvl int) time.Duration {
	if l.delay <= 0 {
		return 0
	}
	return min(l.delay<<min(lvl, 16), MaxAuthFailureDelay)
}

// sweepLocked forgets drained clients; when none has drained it forgets
// the one closest to draining, so the map stays bounded under a flood of
// addresses.
func (l *authLimiter) sweepLocked(now time.Time) {
	var soonest clientKey
	var soonestEnd time.Time
	for k, end := range l.full {
		if !end.After(now) {
			delete(l.full, k)
			continue
		}
		if soonestEnd.IsZero() || end.Before(soonestEnd) {
			soonest, soonestEnd = k, end
		}
	}
	if len(l.full) >= maxAuthClients {
		delete(l.full, soonest)
	}
}
