package main

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRotation(t *testing.T) {
	const cols, rounds = 4, 6
	plan, err := rotation(cols, rounds)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != rounds {
		t.Fatalf("%d rounds planned, want %d", len(plan), rounds)
	}
	places := make([]map[int]bool, cols)
	for c := range places {
		places[c] = map[int]bool{}
	}
	for r, order := range plan {
		if got := slices.Sorted(slices.Values(order)); !slices.Equal(got, []int{0, 1, 2, 3}) {
			t.Errorf("round %d runs columns %v, want each of the %d once", r, order, cols)
		}
		if order[0] != r%cols {
			t.Errorf("round %d starts with column %d, want %d (the order rotates)", r, order[0], r%cols)
		}
		for i, c := range order {
			places[c][i] = true
		}
	}
	for c := range cols {
		if len(places[c]) != cols {
			t.Errorf("column %d took places %v: want every place of %d", c, places[c], cols)
		}
	}
	for _, bad := range [][2]int{{0, 3}, {3, 0}, {-1, 2}} {
		if _, err := rotation(bad[0], bad[1]); err == nil {
			t.Errorf("rotation(%v): want an error", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{5}, 5},
		{[]float64{9, 1, 5}, 5},
		{[]float64{9, 1, 5, 7}, 6}, // an even count: the two middle ones' mean
		{[]float64{4, 4, 100, 4, 0}, 4},
	} {
		in := slices.Clone(tc.in)
		got, err := median(in)
		if err != nil || got != tc.want {
			t.Errorf("median(%v) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("median reordered its input: %v, was %v", in, tc.in)
		}
	}
	if _, err := median(nil); err == nil {
		t.Error("median of no runs: want an error")
	}
}

func TestPairedRatios(t *testing.T) {
	got, ok := pairedRatios([]float64{6, 3, 8}, []float64{10, 5, 10})
	if !ok || !slices.Equal(got, []float64{0.6, 0.6, 0.8}) {
		t.Errorf("pairedRatios = %v, %v; want 0.6 0.6 0.8, round by round", got, ok)
	}
	if lo, hi := span(got); lo != 0.6 || hi != 0.8 {
		t.Errorf("span = %v-%v, want 0.6-0.8", lo, hi)
	}
	for _, bad := range [][2][]float64{
		{{1, 2}, {1}},             // a column missed a round
		{nil, nil},                // no rounds
		{{1, 2}, {1, 0}},          // nothing to divide by
		{{1, math.NaN()}, {1, 1}}, // not a number
	} {
		if r, ok := pairedRatios(bad[0], bad[1]); ok {
			t.Errorf("pairedRatios(%v, %v) = %v, want not ok", bad[0], bad[1], r)
		}
	}
}

// TestIperfTallyCPUPerMB: the CPU time per MB is the runs' CPU over the
// MB they moved together, not an average of each run's own figure; a
// failed run ends the column's part in the row.
func TestIperfTallyCPUPerMB(t *testing.T) {
	var tl iperfTally
	d := 8 * time.Second                            // 1 Gbit/s for 8 s is 1,000 MB
	tl.add(1e9, d, time.Second, nil, nil)           // 1,000 MB, 1 ms each
	tl.add(3e9, d, 1500*time.Millisecond, nil, nil) // 3,000 MB, 0.5 ms each
	got, err := tl.cpuPerMB()
	if err != nil || math.Abs(got-625e-6) > 1e-12 {
		// The runs' own 1 and 0.5 ms average 0.75 ms.
		t.Errorf("cpuPerMB = %v, %v; want 625µs (2.5 s over 4,000 MB)", got, err)
	}
	if !slices.Equal(tl.runs, []float64{1e9, 3e9}) {
		t.Errorf("runs = %v, want 1e9 3e9 in order", tl.runs)
	}
	tl.add(0, d, 0, nil, errors.New("iperf3: server busy"))
	tl.add(5e9, d, time.Second, nil, nil) // after the failure: not counted
	if !tl.done() || len(tl.runs) != 2 {
		t.Errorf("after a failed run: done %v, runs %v; want done, the two runs before it", tl.done(), tl.runs)
	}
	if _, err := tl.cpuPerMB(); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("cpuPerMB after a failed run: %v, want the run's error", err)
	}

	var unread iperfTally
	unread.add(1e9, d, 0, errors.New("no such process"), nil)
	unread.add(1e9, d, time.Second, nil, nil)
	if _, err := unread.cpuPerMB(); err == nil {
		t.Error("cpuPerMB with a run whose CPU time was not read: want an error")
	}
	if _, err := (&iperfTally{}).cpuPerMB(); err == nil {
		t.Error("cpuPerMB without runs: want an error")
	}
}

// fakeIperf stands in for the lab: column i moves (i+1) Gbit/s, and its
// "TUN program" reports 1 s of CPU for each of its own runs.
type fakeIperf struct {
	order  [][2]int // (round, column) of every run, in order
	failAt map[int]int
	onRun  func()
}

func (f *fakeIperf) run(round, col int) (float64, time.Duration, error, error) {
	f.order = append(f.order, [2]int{round, col})
	if f.onRun != nil {
		f.onRun()
	}
	if at, ok := f.failAt[col]; ok && round >= at {
		return 0, 0, nil, errors.New("iperf3: unable to connect")
	}
	return float64(col+1) * 1e9, time.Second, nil, nil
}

func TestInterleaveIperf(t *testing.T) {
	const cols, rounds = 4, 3
	f := &fakeIperf{failAt: map[int]int{2: 1}} // column 2 fails in its second round
	out := []bool{false, false, false, true}   // column 3 could not start
	tally, err := interleaveIperf(context.Background(), cols, rounds, 8*time.Second, out, f.run)
	if err != nil {
		t.Fatal(err)
	}
	// balancedOrder(4, 3): 0 1 3 2, 1 2 0 3, 2 3 1 0.
	want := [][2]int{{0, 0}, {0, 1}, {0, 2}, {1, 1}, {1, 2}, {1, 0}, {2, 1}, {2, 0}}
	if !slices.Equal(f.order, want) {
		t.Errorf("runs (round, column) %v, want %v: balancedOrder, no runs of a column that could not start or failed", f.order, want)
	}
	for i, wantRuns := range [][]float64{{1e9, 1e9, 1e9}, {2e9, 2e9, 2e9}, {3e9}, nil} {
		if !slices.Equal(tally[i].runs, wantRuns) {
			t.Errorf("column %d runs %v, want %v", i, tally[i].runs, wantRuns)
		}
	}
	if tally[2].err == nil {
		t.Error("column 2's failed run left no error")
	}
	if got, err := tally[1].cpuPerMB(); err != nil || math.Abs(got-0.5e-3) > 1e-12 {
		t.Errorf("column 1 cpuPerMB = %v, %v; want 0.5 ms (3 s over the 6,000 MB of its three runs)", got, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	f = &fakeIperf{}
	f.onRun = func() {
		if len(f.order) == 3 {
			cancel()
		}
	}
	if _, err := interleaveIperf(ctx, 2, 5, time.Second, nil, f.run); !errors.Is(err, context.Canceled) {
		t.Errorf("interleaveIperf with a cancelled context = %v, want context.Canceled", err)
	}
	if len(f.order) != 3 {
		t.Errorf("%d runs made: the rounds went on after the cancel", len(f.order))
	}
}

// TestBalancedOrder: over a full cycle every column takes every place
// equally often and follows every other column equally often (a plain
// rotation would have each follow the same one every round).
func TestBalancedOrder(t *testing.T) {
	for _, tc := range []struct{ cols, rounds, each int }{
		{4, 4, 1}, {6, 6, 1}, {2, 2, 1}, // an even count: a cycle is cols rounds
		{3, 6, 2}, {5, 10, 2}, {7, 14, 2}, // an odd count: 2*cols rounds
		{4, 8, 2},
	} {
		plan, err := balancedOrder(tc.cols, tc.rounds)
		if err != nil {
			t.Fatal(err)
		}
		if len(plan) != tc.rounds {
			t.Fatalf("%d columns: %d rounds planned, want %d", tc.cols, len(plan), tc.rounds)
		}
		places := map[[2]int]int{}  // (column, place) -> rounds
		follows := map[[2]int]int{} // (column, the one right before it) -> rounds
		for r, order := range plan {
			if got := slices.Sorted(slices.Values(order)); !slices.Equal(got, seq(tc.cols)) {
				t.Fatalf("%d columns, round %d runs %v: want each once", tc.cols, r, order)
			}
			if r < tc.cols && order[0] != r {
				t.Errorf("%d columns, round %d starts with %d, want %d", tc.cols, r, order[0], r)
			}
			for i, c := range order {
				places[[2]int{c, i}]++
				if i > 0 {
					follows[[2]int{c, order[i-1]}]++
				}
			}
		}
		for c := range tc.cols {
			for o := range tc.cols {
				if n := places[[2]int{c, o}]; n != tc.each {
					t.Errorf("%d columns in %d rounds: column %d takes place %d %d times, want %d", tc.cols, tc.rounds, c, o, n, tc.each)
				}
				if n := follows[[2]int{c, o}]; c != o && n != tc.each {
					t.Errorf("%d columns in %d rounds: column %d follows column %d %d times, want %d", tc.cols, tc.rounds, c, o, n, tc.each)
				}
			}
		}
	}
	if plan, err := balancedOrder(1, 3); err != nil || !slices.Equal(plan[2], []int{0}) {
		t.Errorf("balancedOrder(1, 3) = %v, %v; want one column in each round", plan, err)
	}
	for _, bad := range [][2]int{{0, 3}, {3, 0}} {
		if _, err := balancedOrder(bad[0], bad[1]); err == nil {
			t.Errorf("balancedOrder(%v): want an error", bad)
		}
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
