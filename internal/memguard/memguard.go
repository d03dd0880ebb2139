// Package memguard keeps a process under one memory ceiling (tunsocks run
// --max-memory). It watches the memory the Go runtime holds from the
// system. From 80% of the ceiling the garbage collector works harder (the
// runtime's soft limit); from 90% new flows are refused and, once a second,
// some of the flows idle the longest are shed and the memory they held is
// handed back, until memory is under 80% again. The process sheds load
// instead of being killed by the kernel, and comes back by itself. After a
// burst it hands freed memory back to the system at once rather than
// keeping it for minutes.
package memguard

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// DefaultLimit is the ceiling for a desktop: far above what tunsocks needs
// to carry a busy desktop (tens of MiB), far below what would push the
// machine into swapping.
const DefaultLimit = 1 << 30

// The marks, as fractions of the ceiling.
const (
	// softMark is the Go runtime's soft memory limit: above it the GC runs
	// more often.
	softMark = 0.80
	// refuseMark: from here new flows are refused, and the flows idle the
	// longest shed, until memory falls below resumeMark.
	refuseMark = 0.90
	resumeMark = 0.80
)

// Usage is a sample of the process's memory.
type Usage struct {
	// Used is what the Go runtime holds from the system (mapped and not
	// released): what counts against the ceiling, and close to the RSS.
	Used int64
	// Free is heap memory held but not in use, which could be returned.
	Free int64
}

// Config configures a Guard.
type Config struct {
	// Limit is the ceiling in bytes; 0 means DefaultLimit.
	Limit int64
	// Shed closes some of the flows idle the longest (the caller picks how
	// many: a fraction of them, or the oldest few) and returns how many it
	// closed. nil sheds nothing.
	Shed func() int
	// Logger receives the transitions and counts; nil discards them.
	Logger *slog.Logger
	// Interval is how often memory is sampled; 0 means 250 ms.
	Interval time.Duration
	// Sample reads the memory; nil means the Go runtime's. Tests replace
	// it, and FreeOSMemory with it.
	Sample       func() Usage
	FreeOSMemory func()
}

// Guard enforces a ceiling. Allow is safe for concurrent use.
type Guard struct {
	cfg      Config
	log      *slog.Logger
	runtime  bool // samples the Go runtime: Run sets its soft limit
	refusing atomic.Bool
	refused  atomic.Int64 // flows refused, in all
	shed     atomic.Int64 // flows shed, in all
	frees    atomic.Int64 // memory handed back to the system
	peak     atomic.Int64
}

// Stats are a Guard's counts.
type Stats struct {
	Refused, Shed, Frees int64
	// Peak is the highest Used sampled.
	Peak int64
	// Refusing reports whether new flows are refused now.
	Refusing bool
}

// New returns a Guard; Run enforces it.
func New(cfg Config) *Guard {
	if cfg.Limit == 0 {
		cfg.Limit = DefaultLimit
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	own := cfg.Sample == nil
	if own {
		cfg.Sample = runtimeUsage
	}
	if cfg.FreeOSMemory == nil {
		cfg.FreeOSMemory = debug.FreeOSMemory
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{cfg: cfg, log: log, runtime: own}
}

// Limit returns the ceiling.
func (g *Guard) Limit() int64 { return g.cfg.Limit }

// Allow reports whether a new flow may start. While memory is high it
// returns false and counts the refusal; the count is logged by Run, once
// every 10 s at most.
func (g *Guard) Allow() bool {
	if g == nil || !g.refusing.Load() {
		return true
	}
	g.refused.Add(1)
	return false
}

// Stats returns the counts.
func (g *Guard) Stats() Stats {
	return Stats{Refused: g.refused.Load(), Shed: g.shed.Load(), Frees: g.frees.Load(), Peak: g.peak.Load(), Refusing: g.refusing.Load()}
}

// logEvery bounds how often Run writes a line while refusing or shedding.
const logEvery = 10 * time.Second

// freeEvery bounds how often memory is handed back to the system after a
// burst: it costs a full garbage collection.
const freeEvery = 5 * time.Second

// shedEvery bounds how often flows are shed: the memory they free shows
// only once it has been collected and handed back, which follows each
// shedding at once.
const shedEvery = time.Second

// Run enforces the ceiling until ctx is done. It sets the Go runtime's
// soft memory limit (and restores the previous one when it returns) when
// it samples the runtime itself.
func (g *Guard) Run(ctx context.Context) {
	lim := g.cfg.Limit
	mark := func(f float64) int64 { return int64(float64(lim) * f) }
	if g.runtime {
		prev := debug.SetMemoryLimit(mark(softMark))
		defer debug.SetMemoryLimit(prev)
	}
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	var (
		lastLog, lastFree time.Time
		lastShed          time.Time
		refusedLogged     int64
		shedLogged        int64
	)
	for {
		now := time.Now()
		u := g.cfg.Sample()
		if u.Used > g.peak.Load() {
			g.peak.Store(u.Used)
		}
		switch {
		case u.Used >= mark(refuseMark) && !g.refusing.Load():
			g.refusing.Store(true)
			g.log.Warn("memory near the ceiling: refusing new flows", "used_mib", u.Used>>20, "max_memory_mib", lim>>20)
			lastLog = now
		case u.Used < mark(resumeMark) && g.refusing.Load():
			g.refusing.Store(false)
			g.log.Info("memory back under the ceiling: accepting new flows again", "used_mib", u.Used>>20, "max_memory_mib", lim>>20,
				"refused", g.refused.Load()-refusedLogged, "shed", g.shed.Load()-shedLogged)
			refusedLogged, shedLogged = g.refused.Load(), g.shed.Load()
		}
		shedNow := false
		if g.refusing.Load() && g.cfg.Shed != nil && now.Sub(lastShed) >= shedEvery {
			lastShed = now
			if n := g.cfg.Shed(); n > 0 {
				g.shed.Add(int64(n))
				shedNow = true
			}
		}
		// Hand memory back: after shedding, so that it shows, and after a
		// burst, when much of what the runtime holds is free.
		if shedNow || (now.Sub(lastFree) >= freeEvery && u.Free >= lim/16 && u.Free >= u.Used/4) {
			g.frees.Add(1)
			g.cfg.FreeOSMemory()
			lastFree = now
		}
		if g.refusing.Load() && now.Sub(lastLog) >= logEvery {
			g.log.Warn("memory near the ceiling: still refusing new flows", "used_mib", u.Used>>20, "max_memory_mib", lim>>20,
				"refused", g.refused.Load()-refusedLogged, "shed", g.shed.Load()-shedLogged, "in", now.Sub(lastLog).Round(time.Second))
			refusedLogged, shedLogged = g.refused.Load(), g.shed.Load()
			lastLog = now
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var usageSamples = []metrics.Sample{
	{Name: "/memory/classes/total:bytes"},
	{Name: "/memory/classes/heap/released:bytes"},
	{Name: "/memory/classes/heap/free:bytes"},
}

// runtimeUsage samples the Go runtime.
func runtimeUsage() Usage {
	s := make([]metrics.Sample, len(usageSamples))
	copy(s, usageSamples)
	metrics.Read(s)
	v := func(i int) int64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(s[i].Value.Uint64())
	}
	return Usage{Used: v(0) - v(1), Free: v(2)}
}
