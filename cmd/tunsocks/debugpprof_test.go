package main

import (
	"runtime"
	"testing"
)

//go:noinline
func allocateForProfile(sink *[][]byte) {
	for range 256 {
		*sink = append(*sink, make([]byte, 64<<10))
	}
}

// sampled is how many of allocateForProfile's allocations heap profiles
// have recorded so far.
func sampled(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	runtime.GC()
	n, _ := runtime.MemProfile(nil, true)
	recs := make([]runtime.MemProfileRecord, n+50)
	n, ok := runtime.MemProfile(recs, true)
	if !ok {
		t.Fatal("runtime.MemProfile: the records grew by more than 50")
	}
	var total int64
	for _, r := range recs[:n] {
		for _, pc := range r.Stack() {
			if f := runtime.FuncForPC(pc); f != nil && f.Name() == "github.com/tunsocks/tunsocks/cmd/tunsocks.allocateForProfile" {
				total += r.AllocObjects
				break
			}
		}
	}
	return total
}

// profiledAllocations allocates 16 MiB from one call site and reports
// whether heap profiles recorded any of it.
func profiledAllocations(t *testing.T) bool {
	t.Helper()
	before := sampled(t)
	var sink [][]byte
	allocateForProfile(&sink)
	runtime.KeepAlive(sink)
	return sampled(t) > before
}

// TestSampleAllocations: without --pprof the run samples no allocations
// for heap profiles (each new call stack sampled costs memory no one
// reads); with it, it samples as before.
func TestSampleAllocations(t *testing.T) {
	saved := runtime.MemProfileRate
	t.Cleanup(func() { runtime.MemProfileRate = saved })
	// Start from the runtime's default rate, whatever the tests before
	// left: a test that runs the run command has set the rate of the
	// whole test binary to 0 (no --pprof), so with -count=2 or -shuffle
	// the rate read here was 0 and nothing could be sampled.
	const rate = 512 * 1024
	runtime.MemProfileRate = rate
	sampleAllocations(true)
	if runtime.MemProfileRate != rate {
		t.Fatalf("with profiles served the rate is %d, want %d", runtime.MemProfileRate, rate)
	}
	// The runtime takes one more sample on each processor after the rate
	// changes: on one processor, one allocation elsewhere takes it.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	sampleAllocations(false)
	runtime.KeepAlive(make([]byte, 1<<10))
	if profiledAllocations(t) {
		t.Error("16 MiB allocated without --pprof were sampled for a heap profile")
	}
	runtime.MemProfileRate = rate
	if !profiledAllocations(t) {
		t.Error("16 MiB allocated at the default rate left no heap profile record: the test cannot tell")
	}
}
