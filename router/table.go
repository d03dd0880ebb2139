package router

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/socks"
)

// ErrClosedByRequest is the Err of a flow that CloseFlow or CloseAll
// ended (an operator, through the API).
var ErrClosedByRequest = errors.New("closed by request")

// FlowInfo is one open flow as the router's table shows it.
type FlowInfo struct {
	ID      string // unique for the life of the Router, uuid-shaped
	Network string // "tcp" or "udp"
	// The inbound the flow came through (see Inbound); "" when untagged.
	InType, InName, InUser string
	Src                    netip.AddrPort
	// Dst is where the app sent the flow (for UDP, its first datagram).
	Dst    netip.AddrPort
	Host   string // the name behind Dst, when known
	FakeIP bool   // Dst is a fake IP: the outbound was given Host
	// Process is the executable's path and UID its user, when known: the
	// rules looked them up, or Config.Process did for the table. UID is -1
	// when unknown.
	Process string
	UID     int
	PID     int // 0 when unknown
	// Outbound is the outbound's name; "DNS" for DNS the router answers.
	Outbound string
	Rule     string       // the decision's Rule, as logs say it
	Match    *rules.Match // which rule decided it; nil when the decider did not say
	// Target is the address the outbound was asked for ("host:port"; the
	// name when Dst was a fake IP).
	Target string
	// Remote is the other end of the socket tunsocks dialed: the upstream
	// proxy, or for DIRECT the destination. "" for UDP and DNS.
	Remote   string
	Start    time.Time
	Up, Down int64 // bytes so far, app to destination and back
}

// flowEntry is a FlowInfo in the table, with its live counters.
type flowEntry struct {
	info     FlowInfo // Up, Down and (through procOnce) Process, UID excepted, set before add
	up, down atomic.Int64
	// upC and downC count into the entry and the Router's Stats.
	upC, downC pairCounter
	closeFn    func()
	closedBy   atomic.Bool // CloseFlow or CloseAll ended it
	procOnce   sync.Once
	live       atomic.Pointer[liveFlow] // set while the flow is relayed (see track)
}

// pairCounter is a relay.Counter that adds to a flow's counter and a total.
type pairCounter struct{ flow, total *atomic.Int64 }

func (c pairCounter) Add(n int64) int64 {
	c.total.Add(n)
	return c.flow.Add(n)
}

// table holds the open flows and the totals of the finished ones.
type table struct {
	prefix [18]byte // hex of 9 random bytes, the start of every id
	next   atomic.Uint64

	mu    sync.Mutex
	flows map[string]*flowEntry
	done  map[string]*OutboundTotals // by outbound: flows and bytes of finished flows
}

// OutboundTotals are what an outbound has carried.
type OutboundTotals struct {
	Flows    uint64 // flows opened through it, open ones included
	Up, Down int64
}

func newTable() *table {
	t := &table{flows: map[string]*flowEntry{}, done: map[string]*OutboundTotals{}}
	var b [9]byte
	rand.Read(b[:])
	hex.Encode(t.prefix[:], b[:])
	return t
}

// newID returns a uuid-shaped id (8-4-4-4-12 hex digits, version 4 and
// variant bits set): the Router's random prefix, then a counter in the
// last group. Unique for the Router's life, and cheap.
func (t *table) newID() string {
	n := t.next.Add(1)
	var c [8]byte
	for i := 7; i >= 0; i-- {
		c[i] = byte(n)
		n >>= 8
	}
	var h [16]byte
	hex.Encode(h[:], c[:])
	var b strings.Builder
	b.Grow(36)
	b.Write(t.prefix[0:8])
	b.WriteByte('-')
	b.Write(t.prefix[8:12])
	b.WriteString("-4")
	b.Write(t.prefix[12:15])
	b.WriteString("-8")
	b.Write(t.prefix[15:18])
	b.WriteByte('-')
	b.Write(h[4:16]) // 48 bits of counter
	return b.String()
}

func (t *table) add(e *flowEntry) {
	t.mu.Lock()
	t.flows[e.info.ID] = e
	t.mu.Unlock()
}

// remove takes e out of the table, moving its bytes to its outbound's
// totals in the same step, so a scrape never sees them twice or not at all.
func (t *table) remove(e *flowEntry) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.flows[e.info.ID]; !ok {
		return false
	}
	delete(t.flows, e.info.ID)
	d := t.done[e.info.Outbound]
	if d == nil {
		d = &OutboundTotals{}
		t.done[e.info.Outbound] = d
	}
	d.Flows++
	d.Up += e.up.Load()
	d.Down += e.down.Load()
	return true
}

func (t *table) entries() []*flowEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*flowEntry, 0, len(t.flows))
	for _, e := range t.flows {
		out = append(out, e)
	}
	return out
}

// newEntry starts an entry for a flow from src; its counters count into
// the Router's Stats too. It is not in the table until add.
func (r *Router) newEntry(network string, in flowIn, src netip.AddrPort) *flowEntry {
	e := &flowEntry{info: FlowInfo{ID: r.table.newID(), Network: network, InType: in.typ, InName: in.name, InUser: in.user,
		Src: src, UID: -1, Start: time.Now()}}
	e.upC = pairCounter{flow: &e.up, total: &r.stats.Up}
	e.downC = pairCounter{flow: &e.down, total: &r.stats.Down}
	return e
}

// decided records the decision of the entry's flow: its metadata, where
// it goes and as which address.
func (e *flowEntry) decided(m *rules.Metadata, d Decision, dst netip.AddrPort, target socks.Addr) {
	i := &e.info
	i.Dst, i.Host = dst, m.Host
	i.FakeIP = target.Name != "" && dst.Addr().IsValid()
	i.Process, i.UID, i.PID = m.Process, m.UID, m.PID
	i.Outbound, i.Rule, i.Match = d.name(), d.Rule, d.Match
	i.Target = target.String()
}

// snapshot is the entry's FlowInfo now, its process looked up (once) if
// the rules did not.
func (r *Router) snapshot(e *flowEntry) FlowInfo {
	e.procOnce.Do(func() {
		if e.info.Process == "" && r.cfg.Process != nil {
			if o, err := r.cfg.Process(e.info.Network, e.info.Src, e.info.Dst); err == nil {
				e.info.Process, e.info.UID = o.Path, o.UID
				if o.PID > 0 {
					e.info.PID = o.PID
				}
			}
		}
	})
	fi := e.info
	fi.Up, fi.Down = e.up.Load(), e.down.Load()
	return fi
}

// Flows returns a snapshot of the open flows, in no particular order.
func (r *Router) Flows() []FlowInfo {
	es := r.table.entries()
	out := make([]FlowInfo, len(es))
	for i, e := range es {
		out[i] = r.snapshot(e)
	}
	return out
}

// Flow returns the open flow with this id.
func (r *Router) Flow(id string) (FlowInfo, bool) {
	r.table.mu.Lock()
	e := r.table.flows[id]
	r.table.mu.Unlock()
	if e == nil {
		return FlowInfo{}, false
	}
	return r.snapshot(e), true
}

// CloseFlow ends the open flow with this id as a failure would: a TCP
// app's connection is reset (the app reads "connection reset by peer")
// and the upstream connection closed; a UDP flow is closed. It reports
// whether the flow was open. The flow's record says ErrClosedByRequest.
func (r *Router) CloseFlow(id string) bool {
	r.table.mu.Lock()
	e := r.table.flows[id]
	r.table.mu.Unlock()
	if e == nil {
		return false
	}
	r.closeEntry(e)
	return true
}

// CloseAll ends every open flow (see CloseFlow) and returns how many.
func (r *Router) CloseAll() int {
	es := r.table.entries()
	for _, e := range es {
		r.closeEntry(e)
	}
	return len(es)
}

func (r *Router) closeEntry(e *flowEntry) {
	if e.closedBy.Swap(true) {
		return
	}
	if e.closeFn != nil {
		e.closeFn()
	}
}

// Totals are the bytes moved up and down by every flow so far, open ones
// included.
func (r *Router) Totals() (up, down int64) { return r.stats.Up.Load(), r.stats.Down.Load() }

// OutboundTotals returns, per outbound name, the flows it has carried and
// their bytes, open flows included. The values never decrease.
func (r *Router) OutboundTotals() map[string]OutboundTotals {
	t := r.table
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]OutboundTotals, len(t.done))
	for name, d := range t.done {
		out[name] = *d
	}
	for _, e := range t.flows {
		o := out[e.info.Outbound]
		o.Flows++
		o.Up += e.up.Load()
		o.Down += e.down.Load()
		out[e.info.Outbound] = o
	}
	return out
}
