package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// The iperf3 rows are measured in interleaved rounds too (-iperf-rounds):
// every column (kernel, SOCKS-only, each TUN program) runs the row once in
// every round, the order changing from round to round (balancedOrder), and a column's
// figure is the median of its runs. One 5 s run per column, the columns
// minutes apart, compared the moments as much as the paths: across four
// runs of one code the 1-stream ratios read 0.587-0.617x up and
// 0.552-0.588x down, on both sides of the 0.6 target.

// rotation is the order the columns take their turns in each of rounds
// rounds: round r starts with column r mod cols, the others following in
// order, so that no column always goes first or last.
func rotation(cols, rounds int) ([][]int, error) {
	if cols < 1 || rounds < 1 {
		return nil, fmt.Errorf("rotation of %d columns in %d rounds: want at least one of each", cols, rounds)
	}
	plan := make([][]int, rounds)
	for r := range plan {
		plan[r] = make([]int, cols)
		for i := range cols {
			plan[r][i] = (r + i) % cols
		}
	}
	return plan, nil
}

// median is the middle value of v (the mean of the two middle ones for
// an even count); v is left as it was.
func median(v []float64) (float64, error) {
	if len(v) == 0 {
		return 0, errors.New("no runs")
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], nil
	}
	return (s[n/2-1] + s[n/2]) / 2, nil
}

// pairedRatios are a[i]/b[i], round by round: each round's run of one
// column over the same round's run of the other. ok is false unless both
// ran every round (the same count, at least one) and b's runs are
// positive.
func pairedRatios(a, b []float64) (r []float64, ok bool) {
	if len(a) == 0 || len(a) != len(b) {
		return nil, false
	}
	r = make([]float64, len(a))
	for i := range a {
		if b[i] <= 0 || math.IsNaN(a[i]) || math.IsNaN(b[i]) {
			return nil, false
		}
		r[i] = a[i] / b[i]
	}
	return r, true
}

// span is the lowest and highest of v (v not empty).
func span(v []float64) (lo, hi float64) {
	return slices.Min(v), slices.Max(v)
}

// iperfTally is one column's runs of one iperf3 row over the rounds.
type iperfTally struct {
	runs   []float64     // receiver's bits per second of each run, in round order
	cpu    time.Duration // its TUN program's CPU time over exactly those runs
	mb     float64       // MB those runs moved (throughput x duration)
	cpuErr error         // the first failure to read the CPU time
	err    error         // the first failed run: the column runs the row no more
}

// add records one run: bps over d, with cpu the TUN program's CPU time
// during it (cpuErr when that could not be read; both ignored for a
// column without a TUN program). A failed run (err) ends the column's
// part in the row.
func (t *iperfTally) add(bps float64, d time.Duration, cpu time.Duration, cpuErr, err error) {
	if t.err != nil {
		return
	}
	if err != nil {
		t.err = err
		return
	}
	t.runs = append(t.runs, bps)
	t.mb += bps * d.Seconds() / 8 / 1e6
	t.cpu += cpu
	if t.cpuErr == nil {
		t.cpuErr = cpuErr
	}
}

// done says whether the column takes no more runs of the row.
func (t *iperfTally) done() bool { return t.err != nil }

// cpuPerMB is the TUN program's CPU time per MB over all the column's
// runs of the row (their sum over the MB they moved together), in
// seconds.
func (t *iperfTally) cpuPerMB() (float64, error) {
	switch {
	case t.err != nil:
		return 0, t.err
	case t.cpuErr != nil:
		return 0, t.cpuErr
	case t.mb <= 0:
		return 0, errors.New("nothing moved")
	}
	return t.cpu.Seconds() / t.mb, nil
}

// balancedOrder is the order the columns run an iperf3 row in each of
// rounds rounds: a Williams design, a Latin square in which, over a full
// cycle (cols rounds, or 2*cols for an odd count, every second cycle's
// orders reversed), every column takes every place and follows every
// other column equally often. A plain rotation keeps the neighbours: a
// column would always run right after the same one, and whatever that
// one leaves behind (a TUN program trims its memory 2-4 s after a burst,
// in the next column's run) would always fall on the same column. In the
// first cycle round r starts with column r mod cols.
func balancedOrder(cols, rounds int) ([][]int, error) {
	if cols < 1 || rounds < 1 {
		return nil, fmt.Errorf("order of %d columns in %d rounds: want at least one of each", cols, rounds)
	}
	// The first round: 0, 1, n-1, 2, n-2, ...
	base := make([]int, cols)
	lo, hi := 1, cols-1
	for i := 1; i < cols; i++ {
		if i%2 == 1 {
			base[i] = lo
			lo++
		} else {
			base[i] = hi
			hi--
		}
	}
	plan := make([][]int, rounds)
	for r := range plan {
		plan[r] = make([]int, cols)
		for i, c := range base {
			plan[r][i] = (c + r) % cols
		}
		if cols%2 == 1 && (r/cols)%2 == 1 {
			slices.Reverse(plan[r])
		}
	}
	return plan, nil
}

// iperfRun makes column col's run of a row, in round round (from 0), and
// returns the receiver's bits per second, its TUN program's CPU time
// during the run (cpuErr when that could not be read) and the run's
// error.
type iperfRun func(round, col int) (bps float64, cpu time.Duration, cpuErr, err error)

// interleaveIperf runs one row in rounds rounds of cols columns, in
// balancedOrder, and returns each column's tally; each run lasted d.
// Columns that out marks (they could not start) and columns whose run
// failed take no more runs; only a cancelled context ends the rounds
// early.
func interleaveIperf(ctx context.Context, cols, rounds int, d time.Duration, out []bool, run iperfRun) ([]iperfTally, error) {
	plan, err := balancedOrder(cols, rounds)
	if err != nil {
		return nil, err
	}
	tally := make([]iperfTally, cols)
	for round, order := range plan {
		for _, i := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if (i < len(out) && out[i]) || tally[i].done() {
				continue
			}
			bps, cpu, cpuErr, err := run(round, i)
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr // the run was cut short: no figure
			}
			tally[i].add(bps, d, cpu, cpuErr, err)
		}
	}
	return tally, nil
}
