package memguard

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor polls ok (bounded) and fails the test if it never holds.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if ok() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

func TestGuardMarks(t *testing.T) {
	const lim = 1000 << 20
	var used atomic.Int64
	var sheds, frees atomic.Int64
	var logs testenv.Buffer
	g := New(Config{
		Limit:        lim,
		Interval:     time.Millisecond,
		Sample:       func() Usage { return Usage{Used: used.Load()} },
		FreeOSMemory: func() { frees.Add(1) },
		Shed:         func() int { sheds.Add(1); return 3 },
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	used.Store(lim / 2)
	time.Sleep(20 * time.Millisecond)
	if !g.Allow() || sheds.Load() != 0 {
		t.Fatalf("at 50%%: allow %v, shed %d", g.Allow(), sheds.Load())
	}
	// 91%: new flows refused and counted, the flows idle the longest shed
	// (once a second) and memory handed back after each shedding.
	used.Store(lim * 91 / 100)
	waitFor(t, "refusing at 91%", func() bool { return !g.Allow() })
	for range 9 {
		g.Allow()
	}
	waitFor(t, "shedding at 91%", func() bool { return sheds.Load() > 0 && frees.Load() > 0 })
	// 85%: still refusing (hysteresis), and shedding goes on.
	used.Store(lim * 85 / 100)
	n := sheds.Load()
	waitFor(t, "shedding at 85% after 91%", func() bool { return sheds.Load() > n })
	if g.Allow() {
		t.Error("allowed at 85% after 91%")
	}
	// 70%: accepting again, and the counts are logged.
	used.Store(lim * 70 / 100)
	waitFor(t, "accepting at 70%", func() bool { return g.Allow() })
	st := g.Stats()
	if st.Refused < 11 || st.Shed < 6 || st.Peak != lim*91/100 {
		t.Errorf("stats %+v", st)
	}
	waitFor(t, "the resume line", func() bool { return strings.Contains(logs.String(), "accepting new flows again") })
	if n := strings.Count(logs.String(), "refusing new flows"); n != 1 {
		t.Errorf("%d refusal lines, want 1 (counted, not one per flow):\n%s", n, logs.String())
	}
}

func TestGuardNil(t *testing.T) {
	var g *Guard
	if !g.Allow() {
		t.Fatal("a nil Guard refused")
	}
}

// rss returns the resident set size of this process.
func rss(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func TestGuardReturnsMemoryAfterBurst(t *testing.T) {
	// A burst of 256 MiB, then garbage: the guard hands the freed heap
	// back to the system instead of the runtime keeping it.
	g := New(Config{Limit: 1 << 30, Interval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	before, beforeUsed := rss(t), runtimeUsage().Used
	burst := make([][]byte, 256)
	for i := range burst {
		burst[i] = make([]byte, 1<<20)
		for j := 0; j < len(burst[i]); j += 4096 {
			burst[i][j] = 1
		}
	}
	peak, peakUsed := rss(t), runtimeUsage().Used
	burst = nil
	runtime.GC() // the collection that would come anyway
	waitFor(t, "the freed burst handed back", func() bool { return runtimeUsage().Free < 32<<20 })
	if g.Stats().Frees == 0 {
		t.Error("memory went back without the guard handing it back")
	}
	after, afterUsed := rss(t), runtimeUsage().Used
	// RSS also counts memory outside the Go runtime (the race detector's
	// shadow memory), so the assertion is on what the runtime holds.
	t.Logf("RSS %d MiB before, %d MiB at the burst's peak, %d MiB after; held by the Go runtime %d, %d, %d MiB",
		before>>20, peak>>20, after>>20, beforeUsed>>20, peakUsed>>20, afterUsed>>20)
	if afterUsed > beforeUsed+64<<20 {
		t.Errorf("the runtime holds %d MiB after the burst, %d MiB before", afterUsed>>20, beforeUsed>>20)
	}
}
