package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// The 1-byte round-trip rows are measured in interleaved rounds: every
// column (kernel, SOCKS-only, each TUN program) holds one connection open
// and takes a turn of round trips in every round, the order rotating from
// round to round, and each column's percentiles are taken over all its
// samples. Columns measured in phases minutes apart compared host noise
// as much as paths (the copying-server SOCKS-only p50 of one code read
// 63-252 µs in different runs); interleaved, the noise of a moment falls
// on every column alike.

// rttTurnWarmup is how many round trips a column makes at the start of
// each of its turns, outside its samples and its TUN program's counters:
// the first trips after the other columns' turns find cold caches and
// parked threads, which measuring column by column never did.
const rttTurnWarmup = 3

// turn is one column's share of one round.
type turn struct {
	col   int // index of the column
	trips int // measured round trips
}

// rttSchedule plans n measured round trips for each of cols columns in
// rounds rounds: every round gives each column one turn of n/rounds round
// trips (the first n%rounds rounds one more), and round r starts with
// column r mod cols, the others following in order, so that no column
// always goes first or last.
func rttSchedule(cols, rounds, n int) ([][]turn, error) {
	if cols < 1 || rounds < 1 || n < rounds {
		return nil, fmt.Errorf("round-trip schedule: %d columns, %d rounds, %d round trips: want at least one column and at least one round trip per round", cols, rounds, n)
	}
	order, err := rotation(cols, rounds)
	if err != nil {
		return nil, err
	}
	plan := make([][]turn, rounds)
	for r := range plan {
		trips := n / rounds
		if r < n%rounds {
			trips++
		}
		plan[r] = make([]turn, cols)
		for i, col := range order[r] {
			plan[r][i] = turn{col: col, trips: trips}
		}
	}
	return plan, nil
}

// rttTally is one column's round trips over all its turns.
type rttTally struct {
	samples  []time.Duration
	switches float64       // its TUN program's context switches during the measured trips
	cpu      time.Duration // and CPU time
	counted  int           // measured trips its counters covered
	turns    []int         // samples of each turn, in order
}

// turnMedians are the p50 of each turn on its own, for the log: how much
// the moment moved a column.
func (t *rttTally) turnMedians() []time.Duration {
	var meds []time.Duration
	rest := t.samples
	for _, n := range t.turns {
		turn := slices.Clone(rest[:n])
		rest = rest[n:]
		if m, err := percentile(turn, 0.5); err == nil {
			meds = append(meds, m)
		}
	}
	return meds
}

// addTurn adds one turn: its samples and, for a column with a TUN program,
// the program's switches and CPU time during exactly those trips.
func (t *rttTally) addTurn(samples []time.Duration, switches float64, cpu time.Duration, counted bool) {
	t.samples = append(t.samples, samples...)
	t.turns = append(t.turns, len(samples))
	if counted {
		t.switches += switches
		t.cpu += cpu
		t.counted += len(samples)
	}
}

// percentiles are the p50 and p99 of every sample of every turn together
// (not an average of the turns' percentiles).
func (t *rttTally) percentiles() (p50, p99 time.Duration, err error) {
	all := slices.Clone(t.samples) // percentile sorts; the turns stay in order
	if p50, err = percentile(all, 0.50); err != nil {
		return 0, 0, err
	}
	p99, err = percentile(all, 0.99)
	return p50, p99, err
}

// perTrip is the TUN program's switches and CPU time per measured round
// trip: the sums over the turns divided by the trips they covered.
func (t *rttTally) perTrip() (switches float64, cpu time.Duration, err error) {
	if t.counted == 0 {
		return 0, 0, errors.New("no round trip counted")
	}
	return t.switches / float64(t.counted), t.cpu / time.Duration(t.counted), nil
}

// rttColumn is one column of the interleaved round trips.
type rttColumn struct {
	p path
	// trip makes one round trip on the column's connection and returns
	// how long it took.
	trip func() (time.Duration, error)
	// counters reads the column's TUN program's context switches and CPU
	// time so far; nil for a column without one.
	counters  func() (switches float64, cpu time.Duration, err error)
	turnStart func() error
	tally     rttTally
	err       error // the first failure; the column takes no more turns
}

// interleave runs the schedule of n round trips per column in rounds
// rounds. A column that fails keeps its error and sits out the rest; only
// a cancelled context ends the rounds early.
func interleave(ctx context.Context, cols []*rttColumn, rounds, n int) error {
	plan, err := rttSchedule(len(cols), rounds, n)
	if err != nil {
		return err
	}
	for _, round := range plan {
		for _, tn := range round {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := cols[tn.col]
			if c.err == nil {
				c.err = c.takeTurn(tn.trips)
			}
		}
	}
	return ctx.Err()
}

// takeTurn makes a turn's warm-up trips, then trips measured ones,
// reading the column's counters right before and right after these.
func (c *rttColumn) takeTurn(trips int) error {
	if c.turnStart != nil {
		if err := c.turnStart(); err != nil {
			return err
		}
	}
	for range rttTurnWarmup {
		if _, err := c.trip(); err != nil {
			return err
		}
	}
	var sw0, sw1 float64
	var cpu0, cpu1 time.Duration
	var err error
	if c.counters != nil {
		if sw0, cpu0, err = c.counters(); err != nil {
			return err
		}
	}
	samples := make([]time.Duration, 0, trips)
	for range trips {
		d, err := c.trip()
		if err != nil {
			return err
		}
		samples = append(samples, d)
	}
	if c.counters != nil {
		if sw1, cpu1, err = c.counters(); err != nil {
			return err
		}
	}
	c.tally.addTurn(samples, sw1-sw0, cpu1-cpu0, c.counters != nil)
	return nil
}
