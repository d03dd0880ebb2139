package main

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestRTTSchedule(t *testing.T) {
	const cols, rounds, n = 4, 5, 2003
	plan, err := rttSchedule(cols, rounds, n)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != rounds {
		t.Fatalf("%d rounds planned, want %d", len(plan), rounds)
	}
	total := make([]int, cols)
	positions := make([]map[int]bool, cols) // the places each column took in its rounds
	for c := range positions {
		positions[c] = map[int]bool{}
	}
	for r, round := range plan {
		if len(round) != cols {
			t.Fatalf("round %d has %d turns, want one per column (%d)", r, len(round), cols)
		}
		seen := map[int]bool{}
		for i, tn := range round {
			if seen[tn.col] {
				t.Errorf("round %d gives column %d two turns", r, tn.col)
			}
			seen[tn.col] = true
			if tn.trips != n/rounds && tn.trips != n/rounds+1 {
				t.Errorf("round %d, column %d: %d trips, want %d or %d", r, tn.col, tn.trips, n/rounds, n/rounds+1)
			}
			total[tn.col] += tn.trips
			positions[tn.col][i] = true
		}
		if round[0].col != r%cols {
			t.Errorf("round %d starts with column %d, want %d (the order rotates)", r, round[0].col, r%cols)
		}
	}
	for c := range cols {
		if total[c] != n {
			t.Errorf("column %d gets %d round trips in all, want %d", c, total[c], n)
		}
		if len(positions[c]) != cols {
			t.Errorf("column %d took places %v in %d rounds: want every place of %d", c, positions[c], rounds, cols)
		}
	}

	for _, bad := range [][3]int{{0, 5, 100}, {3, 0, 100}, {3, 5, 4}} {
		if _, err := rttSchedule(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("rttSchedule(%v): want an error", bad)
		}
	}
}

// TestRTTTallyMerges: the percentiles are over every sample of every turn,
// and the per-trip figures are the turns' sums over the trips they
// counted: neither an average of the turns' own figures.
func TestRTTTallyMerges(t *testing.T) {
	var tl rttTally
	fast := make([]time.Duration, 60)
	for i := range fast {
		fast[i] = time.Millisecond
	}
	slow := make([]time.Duration, 40)
	for i := range slow {
		slow[i] = 9 * time.Millisecond
	}
	tl.addTurn(fast, 120, 60*time.Millisecond, true) // 2 switches, 1 ms a trip
	tl.addTurn(slow, 40, 4*time.Millisecond, true)   // 1 switch, 100 µs a trip
	tl.addTurn(fast[:10], 0, 0, false)               // a turn the counters missed
	p50, p99, err := tl.percentiles()
	if err != nil || p50 != time.Millisecond || p99 != 9*time.Millisecond {
		// The turns' p50s, 1, 9 and 1 ms, average 3.7 ms.
		t.Errorf("percentiles = %v, %v, %v; want 1ms, 9ms over all 110 samples", p50, p99, err)
	}
	if meds := tl.turnMedians(); !slices.Equal(meds, []time.Duration{time.Millisecond, 9 * time.Millisecond, time.Millisecond}) {
		t.Errorf("turnMedians = %v, want each turn's own: 1ms 9ms 1ms", meds)
	}
	sw, cpu, err := tl.perTrip()
	if err != nil || sw != 1.6 || cpu != 640*time.Microsecond {
		// The turns' own ratios average 1.5 switches and 550 µs.
		t.Errorf("perTrip = %v, %v, %v; want 1.6 switches and 640µs (160 and 64 ms over 100 trips)", sw, cpu, err)
	}

	var none rttTally
	none.addTurn(fast, 0, 0, false)
	if _, _, err := none.perTrip(); err == nil {
		t.Error("perTrip of a column without counters: want an error")
	}
	if _, _, err := (&rttTally{}).percentiles(); err == nil {
		t.Error("percentiles without samples: want an error")
	}
}

// fakeRTT stands in for the lab: columns whose trips take a duration of
// their own, and whose "TUN programs" count one switch and 1 µs of CPU
// for each of their own trips, warm-up included, and 1,000 of each for
// every trip of another column (what a reading that strayed outside the
// column's own measured trips would pick up).
type fakeRTT struct {
	order   []int // the column of every trip, in order
	own     []int // trips of each column so far
	all     int
	failAt  map[int]int // column -> its trip number that fails
	onTrip  func()
	columns []*rttColumn
}

func newFakeRTT(n int, counted ...bool) *fakeRTT {
	f := &fakeRTT{own: make([]int, n), failAt: map[int]int{}}
	for i := range n {
		c := &rttColumn{p: path(i)}
		c.trip = func() (time.Duration, error) {
			f.order = append(f.order, i)
			f.own[i]++
			f.all++
			if f.onTrip != nil {
				f.onTrip()
			}
			if at, ok := f.failAt[i]; ok && f.own[i] >= at {
				return 0, errors.New("connection reset")
			}
			return time.Duration(i+1) * time.Millisecond, nil
		}
		if i < len(counted) && counted[i] {
			c.counters = func() (float64, time.Duration, error) {
				others := f.all - f.own[i]
				v := float64(f.own[i] + 1000*others)
				return v, time.Duration(v) * time.Microsecond, nil
			}
		}
		f.columns = append(f.columns, c)
	}
	return f
}

func TestInterleave(t *testing.T) {
	const cols, rounds, n = 3, 4, 1001
	f := newFakeRTT(cols, false, true, true)
	if err := interleave(context.Background(), f.columns, rounds, n); err != nil {
		t.Fatal(err)
	}
	for i, c := range f.columns {
		if c.err != nil {
			t.Fatalf("column %d: %v", i, c.err)
		}
		if len(c.tally.samples) != n {
			t.Errorf("column %d: %d samples, want %d (warm-up trips left out)", i, len(c.tally.samples), n)
		}
		if f.own[i] != n+rounds*rttTurnWarmup {
			t.Errorf("column %d made %d trips, want %d measured + %d warm-up", i, f.own[i], n, rounds*rttTurnWarmup)
		}
		want := time.Duration(i+1) * time.Millisecond
		if p50, p99, err := c.tally.percentiles(); err != nil || p50 != want || p99 != want {
			t.Errorf("column %d: percentiles %v, %v, %v; want its own trips' %v", i, p50, p99, err, want)
		}
		sw, cpu, err := c.tally.perTrip()
		if i == 0 {
			if err == nil {
				t.Errorf("column 0 has no counters, yet perTrip = %v, %v", sw, cpu)
			}
			continue
		}
		if err != nil || sw != 1 || cpu != time.Microsecond {
			t.Errorf("column %d: perTrip = %v, %v, %v; want exactly 1 switch and 1µs: its measured trips only", i, sw, cpu, err)
		}
	}
	// Turns: each column's warm-up and measured trips in one run, the
	// columns in rotated order.
	var turns []int
	for i, c := range f.order {
		if i == 0 || f.order[i-1] != c {
			turns = append(turns, c)
		}
	}
	var want []int
	for r := range rounds {
		for i := range cols {
			want = append(want, (r+i)%cols)
		}
	}
	if !slices.Equal(turns, want) {
		t.Errorf("turns in order %v, want %v", turns, want)
	}
}

// TestInterleaveFailureAndCancel: a column that fails keeps its error and
// takes no more turns while the others finish; a cancelled context stops
// the rounds.
func TestInterleaveFailureAndCancel(t *testing.T) {
	f := newFakeRTT(2, true, true)
	f.failAt[1] = 300 // in its second turn: the first makes 3 + 250 trips
	if err := interleave(context.Background(), f.columns, 4, 1000); err != nil {
		t.Fatal(err)
	}
	if f.columns[1].err == nil {
		t.Fatal("column 1's failing trip left no error")
	}
	if f.own[1] != 300 {
		t.Errorf("column 1 made %d trips, want 300: none after it failed", f.own[1])
	}
	if f.columns[0].err != nil || len(f.columns[0].tally.samples) != 1000 {
		t.Errorf("column 0: %v, %d samples; want all 1000 despite column 1", f.columns[0].err, len(f.columns[0].tally.samples))
	}

	ctx, cancel := context.WithCancel(context.Background())
	f = newFakeRTT(2)
	f.onTrip = func() {
		if f.all == 500 {
			cancel()
		}
	}
	if err := interleave(ctx, f.columns, 5, 1000); !errors.Is(err, context.Canceled) {
		t.Errorf("interleave with a cancelled context = %v, want context.Canceled", err)
	}
	if f.all > 500+200+rttTurnWarmup {
		t.Errorf("%d trips made: the rounds went on after the cancel", f.all)
	}
}

// TestInterleaveTurnStart: a column's turnStart runs once at the start of
// each of its turns, before any of the turn's trips (measureRTT switches
// the column to its next TUN program run there).
func TestInterleaveTurnStart(t *testing.T) {
	f := newFakeRTT(2)
	var runs []int // the run each trip of column 1 went to
	cur, turns := 0, 0
	f.columns[1].turnStart = func() error {
		cur = turns % 3
		turns++
		return nil
	}
	trip := f.columns[1].trip
	f.columns[1].trip = func() (time.Duration, error) {
		runs = append(runs, cur)
		return trip()
	}
	const rounds, n = 6, 600
	if err := interleave(context.Background(), f.columns, rounds, n); err != nil {
		t.Fatal(err)
	}
	if turns != rounds {
		t.Fatalf("turnStart ran %d times, want once a turn (%d)", turns, rounds)
	}
	per := n/rounds + rttTurnWarmup
	for i, r := range runs {
		if want := (i / per) % 3; r != want {
			t.Fatalf("trip %d (turn %d) went to run %d, want %d: every trip of a turn after its turnStart", i, i/per, r, want)
		}
	}
	f.columns[0].turnStart = func() error { return errors.New("no run left") }
	f.columns[0].err = nil
	if err := interleave(context.Background(), f.columns[:1], 2, 200); err != nil || f.columns[0].err == nil {
		t.Errorf("a failing turnStart: interleave %v, column error %v; want the column's error", err, f.columns[0].err)
	}
}
