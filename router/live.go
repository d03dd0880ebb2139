package router

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"
)

// liveFlow is a flow of the table while it is relayed: its relay's
// last-activity clock (time.UnixNano) and what ends it, so that the ones
// idle the longest can be shed (ShedIdle).
type liveFlow struct {
	clock *atomic.Int64
	own   atomic.Int64 // the clock, when the relay has none of its own
	stop  context.CancelFunc
	shed  atomic.Bool
	// reset, when set (TCP), resets the app's connection before a shed
	// flow is stopped: a connection closed gracefully lingers in the
	// netstack (FIN-WAIT) for as long as the app keeps its end open, and
	// so does its memory.
	reset func()
}

// ErrShed is a flow's error when ShedIdle closed it.
var ErrShed = errors.New("router: flow shed to stay under the memory ceiling")

// track marks e's flow as relayed under ctx, with clock as its activity
// clock (nil: one of its own); the relay runs under the returned context,
// which ShedIdle cancels.
func (r *Router) track(ctx context.Context, e *flowEntry, clock *atomic.Int64) (context.Context, *liveFlow) {
	ctx, cancel := context.WithCancel(ctx)
	lf := &liveFlow{clock: clock, stop: cancel}
	if e.info.Network == "tcp" {
		lf.reset = e.closeFn
	}
	if lf.clock == nil {
		lf.clock = &lf.own
	}
	lf.clock.Store(time.Now().UnixNano())
	e.live.Store(lf)
	return ctx, lf
}

// untrack ends the relayed state of e's flow; a shed flow's record says so.
func (r *Router) untrack(e *flowEntry, lf *liveFlow, rec *FlowRecord) {
	e.live.Store(nil)
	lf.stop()
	if lf.shed.Load() {
		rec.Err = ErrShed
	}
}

// ShedIdle closes the given fraction (0 to 1) of the table's flows being
// relayed,
// at least one when there is any, those idle the longest first, and
// returns how many it closed. A closed flow ends as if its idle timer had
// fired, except that the app's TCP connection is reset, so that the
// netstack frees it at once. The memory ceiling sheds with it.
func (r *Router) ShedIdle(fraction float64) int {
	es := r.table.entries()
	flows := make([]*liveFlow, 0, len(es))
	for _, e := range es {
		if lf := e.live.Load(); lf != nil {
			flows = append(flows, lf)
		}
	}
	if len(flows) == 0 {
		return 0
	}
	n := min(max(int(float64(len(flows))*fraction), 1), len(flows))
	last := make(map[*liveFlow]int64, len(flows))
	for _, f := range flows {
		last[f] = f.clock.Load()
	}
	slices.SortFunc(flows, func(a, b *liveFlow) int {
		switch x, y := last[a], last[b]; {
		case x < y:
			return -1
		case x > y:
			return 1
		}
		return 0
	})
	for _, f := range flows[:n] {
		f.shed.Store(true)
		if f.reset != nil {
			f.reset()
		}
		f.stop()
	}
	r.stats.Shed.Add(int64(n))
	r.log.Debug("shed the flows idle the longest", "shed", n, "open", len(flows),
		"idle_at_least", time.Since(time.Unix(0, last[flows[n-1]])).Round(time.Second))
	return n
}

// admit asks Config.Admit about a new flow.
func (r *Router) admit() bool {
	if r.cfg.Admit == nil || r.cfg.Admit() {
		return true
	}
	r.stats.Refused.Add(1)
	return false
}
