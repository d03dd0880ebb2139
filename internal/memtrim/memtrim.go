// Package memtrim gives memory back to the operating system once a
// long-running process has gone quiet after a burst.
//
// The Go runtime keeps the heap it grew for a burst (a bulk transfer,
// thousands of handshakes) and returns it only slowly; goroutine stacks
// grown for a burst shrink only at a collection. A proxy then sits at its
// peak footprint for minutes while doing nothing. Trimmer watches an
// activity counter (bytes moved, flows opened) and, when it has barely
// moved for a quiet period after a busy one, or while the runtime holds
// more than a threshold of free heap, trims once: collections (which also shrink idle
// goroutines' stacks) and the free memory handed back. DropCode, once
// start-up is done, unmaps the pages of the executable only start-up used.
package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Options tune a Trimmer. Zero values take the defaults.
type Options struct {
	// Interval is how often the counter is looked at. Default 2 s.
	Interval time.Duration
	// Quiet is how much activity an interval may have and still count as
	// quiet (in the counter's units, bytes for tunsocks). Default 128 KiB.
	Quiet uint64
	// MinFree is the free heap the runtime must hold before a trim is
	// worth its collection. Default 4 MiB.
	MinFree uint64
	// CodeAfter, when > 0, is how long activity must stay quiet after a
	// burst's trim before the executable's pages are unmapped too
	// (DropCode, then one collection, as in Settle): the code and
	// tables the burst ran are not part of an idle process's working set,
	// and come back with minor faults when traffic does. Once per quiet
	// period. Zero: never.
	CodeAfter time.Duration
	// Release, when set, runs at every trim before the collections:
	// it hands back memory the program keeps allocated between bursts
	// but whose contents no longer matter (a stack's device buffers,
	// see ReleasePages).
	Release func()
}

// Trimmer is the loop; see Run.
type Trimmer struct {
	activity func() uint64
	opts     Options
	free     func() uint64
	trim     func()
	dropCode func()
}

// New returns a Trimmer watching activity, a counter that only grows.
func New(activity func() uint64, opts Options) *Trimmer {
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Quiet == 0 {
		opts.Quiet = 128 << 10
	}
	if opts.MinFree == 0 {
		opts.MinFree = 4 << 20
	}
	t := &Trimmer{activity: activity, opts: opts, free: heapFree, trim: trim, dropCode: func() { _, _ = Settle() }}
	if opts.Release != nil {
		t.trim = func() {
			opts.Release()
			trim()
		}
	}
	return t
}

// trim collects three times: each collection halves the stack of a
// goroutine that uses less than a quarter of it, and a request's
// goroutine that grew to 32 KiB for a handshake idles in a relay using a
// few. The last, debug.FreeOSMemory, hands the free heap (old stacks
// included) back to the system.
//
// It leaves the executable's pages mapped (DropCode): right after a
// burst they are the code flows run, which the next flow maps back. Only
// a process that then stays quiet for Options.CodeAfter unmaps them.
func trim() {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
}

// Run trims until ctx is done: in the first quiet interval after a busy
// one, and in a quiet interval when the runtime holds MinFree of free
// heap. A process that stays idle trims once, not every interval.
func (t *Trimmer) Run(ctx context.Context) {
	tick := time.NewTicker(t.opts.Interval)
	defer tick.Stop()
	st := state{last: t.activity()}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.step(&st)
	}
}

// state is what step remembers between looks.
type state struct {
	last  uint64 // the activity counter at the last look
	burst bool   // an interval since the last trim was busy
	// code: a burst was trimmed since the last DropCode, and activity
	// has been quiet for quiet since.
	code  bool
	quiet time.Duration
}

// step is one look. It reports whether it trimmed.
func (t *Trimmer) step(st *state) bool {
	now := t.activity()
	busy := now-st.last > t.opts.Quiet
	st.last = now
	if busy {
		st.burst = true
		st.quiet = 0
		return false
	}
	if st.code && !st.burst && t.opts.CodeAfter > 0 {
		st.quiet += t.opts.Interval
		if st.quiet >= t.opts.CodeAfter {
			st.code = false
			t.dropCode()
		}
	}
	if !st.burst && t.free() < t.opts.MinFree {
		return false
	}
	if st.burst {
		st.code, st.quiet = true, 0
	}
	st.burst = false
	t.trim()
	return true
}

// Settle is for a program whose start-up is done: a collection, the free
// heap handed back to the system, DropCode, and one more collection that
// hands back what is free again. That collection maps back what every
// collection runs and reads (the collector's code, the tables of every
// goroutine's frames): a running program collects within two minutes at
// the latest, so those pages are part of its working set, not of
// start-up's, and left out they would be counted against whatever the
// program does next (a delta of RSS around opening idle connections read
// 2.5-2.8 KiB per connection more at 1,000). Handing back after it frees
// DropCode's own garbage too: its copy of /proc/self/smaps and the parse
// of it, a few hundred KiB the runtime would otherwise keep. It returns
// what DropCode unmapped.
func Settle() (uint64, error) {
	return settle(debug.FreeOSMemory, DropCode)
}

// settle is Settle with its parts given: free hands back the free heap
// after a collection, drop unmaps the code.
func settle(free func(), drop func() (uint64, error)) (uint64, error) {
	free()
	n, err := drop()
	free()
	return n, err
}

// heapFree is the heap the runtime holds free and has not returned to the
// operating system, read without stopping the world.
func heapFree() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
