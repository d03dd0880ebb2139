package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestStepTrimsOnceAfterABurstOrWithFreeHeap(t *testing.T) {
	var act, free uint64
	trims := 0
	tr := New(func() uint64 { return act }, Options{Quiet: 100, MinFree: 1000})
	tr.free = func() uint64 { return free }
	tr.trim = func() { trims++; free = 0 }
	var st state
	for i, c := range []struct {
		addAct, free uint64
		want         bool
	}{
		{addAct: 0, free: 0, want: false},    // quiet from the start, nothing free
		{addAct: 5000, free: 0, want: false}, // busy
		{addAct: 5000, free: 0, want: false}, // still busy
		{addAct: 50, free: 0, want: true},    // quiet after a burst: trim, free heap or not
		{addAct: 0, free: 0, want: false},    // still quiet: no second trim
		{addAct: 0, free: 999, want: false},  // free heap below MinFree
		{addAct: 0, free: 5000, want: true},  // free heap over MinFree while quiet
		{addAct: 101, free: 0, want: false},  // just over Quiet is busy
		{addAct: 100, free: 0, want: true},   // at Quiet counts as quiet
		{addAct: 100, free: 0, want: false},  // and stays quiet
	} {
		act += c.addAct
		free = c.free
		if got := tr.step(&st); got != c.want {
			t.Errorf("step %d (activity +%d, free %d) trimmed = %v, want %v", i, c.addAct, c.free, got, c.want)
		}
	}
	if trims != 3 {
		t.Errorf("%d trims, want 3", trims)
	}
}

// TestReleaseAtEveryTrim: Options.Release runs with each trim, and only
// then.
func TestReleaseAtEveryTrim(t *testing.T) {
	var act uint64
	releases := 0
	tr := New(func() uint64 { return act }, Options{Quiet: 100, MinFree: 1 << 62, Release: func() { releases++ }})
	tr.free = func() uint64 { return 0 }
	var st state
	for i, c := range []struct {
		addAct uint64
		want   int
	}{{0, 0}, {5000, 0}, {0, 1}, {0, 1}, {5000, 1}, {0, 2}} {
		act += c.addAct
		tr.step(&st)
		if releases != c.want {
			t.Fatalf("step %d: %d releases, want %d", i, releases, c.want)
		}
	}
}

// TestCodeDroppedAfterLongQuiet: with CodeAfter, the executable's pages
// are dropped once activity has stayed quiet that long after a burst's
// trim; not before, not twice in one quiet period, not without a burst,
// and a burst in between starts the wait again.
func TestCodeDroppedAfterLongQuiet(t *testing.T) {
	var act uint64
	drops := 0
	tr := New(func() uint64 { return act }, Options{Interval: time.Second, Quiet: 100, MinFree: 1 << 62, CodeAfter: 3 * time.Second})
	tr.free = func() uint64 { return 0 }
	tr.trim = func() {}
	tr.dropCode = func() { drops++ }
	var st state
	for i, c := range []struct {
		addAct uint64
		want   int
	}{
		{0, 0}, {0, 0}, {0, 0}, {0, 0}, // quiet from the start: no burst, nothing to drop
		{5000, 0},                      // busy
		{0, 0},                         // quiet: the burst's trim
		{0, 0},                         // 1 s quiet since
		{0, 0},                         // 2 s
		{0, 1},                         // 3 s: dropped
		{0, 1}, {0, 1}, {0, 1}, {0, 1}, // once per quiet period
		{5000, 1}, {0, 1}, {0, 1}, // a burst, its trim, 1 s
		{5000, 1}, {0, 1}, {0, 1}, {0, 1}, // another burst before 3 s: the wait starts again
		{0, 2}, // 3 s after the last burst's trim
	} {
		act += c.addAct
		tr.step(&st)
		if drops != c.want {
			t.Fatalf("step %d: %d code drops, want %d", i, drops, c.want)
		}
	}
	off := New(func() uint64 { return act }, Options{Interval: time.Second, Quiet: 100})
	off.free = func() uint64 { return 0 }
	off.trim = func() {}
	off.dropCode = func() { t.Fatal("code dropped with CodeAfter 0") }
	st = state{}
	for _, a := range []uint64{5000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} {
		act += a
		off.step(&st)
	}
}

func TestDefaults(t *testing.T) {
	tr := New(func() uint64 { return 0 }, Options{})
	if tr.opts.Interval != 2*time.Second || tr.opts.Quiet != 128<<10 || tr.opts.MinFree != 4<<20 {
		t.Errorf("defaults %+v", tr.opts)
	}
}

// TestRunReturnsMemory: after a burst of garbage, a quiet Run hands the
// free heap back (the runtime's free-heap figure drops), and stops with
// its context.
func TestRunReturnsMemory(t *testing.T) {
	defer goleak.VerifyNone(t)
	var sink atomic.Pointer[[]byte]
	for range 64 {
		b := make([]byte, 1<<20)
		b[0] = 1
		sink.Store(&b)
	}
	sink.Store(nil)
	runtime.GC() // the burst is garbage now, held as free heap
	if heapFree() < 8<<20 {
		t.Skipf("the runtime holds only %d bytes free after the burst; nothing to trim", heapFree())
	}
	var trimmed atomic.Bool
	tr := New(func() uint64 { return 0 }, Options{Interval: 10 * time.Millisecond})
	inner := tr.trim
	tr.trim = func() { inner(); trimmed.Store(true) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for !trimmed.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if !trimmed.Load() {
		t.Fatal("no trim within 10 s of a quiet process holding free heap")
	}
	if f := heapFree(); f >= 4<<20 {
		t.Errorf("free heap after the trim %d bytes, want under 4 MiB", f)
	}
}

// TestSettleHandsBackDropCodesGarbage: what DropCode allocated (its copy
// of /proc/self/smaps and the parse of it) is garbage after Settle, and
// Settle collects it and hands it back to the system instead of leaving
// it in the heap the process keeps resident.
func TestSettleHandsBackDropCodesGarbage(t *testing.T) {
	// Garbage of the size of a large smaps, made where DropCode runs.
	const garbage = 64 * 8 << 10
	drop := func() (uint64, error) {
		n, err := DropCode()
		for range 64 {
			sink = make([]byte, 8<<10)
		}
		sink = nil
		return n, err
	}
	// Collected: the heap's objects after Settle are what one more
	// collection leaves, give or take what the test binary's other
	// goroutines allocate meanwhile; without a collection at its end
	// Settle leaves DropCode's garbage among them.
	// Handed back: the free heap after Settle is what the runtime keeps
	// whatever one does (pages cached per P, stacks of goroutines that
	// ended meanwhile: up to ~3 MiB on a busy machine), not more.
	check := func(what string, settle func() error) {
		t.Helper()
		if err := settle(); err != nil {
			t.Fatal(err)
		}
		after, free := heapObjects(), heapFree()
		runtime.GC()
		if kept := int64(after) - int64(heapObjects()); kept > garbage/2 {
			t.Errorf("%s: %d KiB of garbage still in the heap after it, want it collected", what, kept>>10)
		}
		if free > 4<<20 {
			t.Errorf("%s: %d KiB of free heap kept after it, want it handed back", what, free>>10)
		}
	}
	check("settle", func() error { _, err := settle(debug.FreeOSMemory, drop); return err })
	check("Settle", func() error { _, err := Settle(); return err })
}

// heapObjects is the heap the runtime counts as objects: the live ones
// and the garbage not yet collected.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

var sink []byte
