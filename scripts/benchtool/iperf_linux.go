package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/internal/lab"
)

// iperfColumn is one column of the interleaved iperf3 rounds.
type iperfColumn struct {
	p    path
	host *lab.Lab // whose app host its iperf3 client runs in
	pid  int      // its TUN program; 0 for a column without one
	err  error    // why it could not start; its rows get this error
	// For the log: its TUN program's CPU time when the phase began, and
	// over its own runs.
	cpu0, own time.Duration
}

// measureIperf fills every iperf3 row of the lab (each stream count, up
// and down) in b.cfg.iperfRounds interleaved rounds (see iperfrounds.go):
// in every round each column runs the row once with the same iperf3
// settings as ever, the order changing (balancedOrder). The kernel and
// SOCKS-only columns run from the lab's app host, so the phase comes
// before the TUN programs take its default route; each TUN program runs
// in an app host of its own, linked to the proxy host like the lab's
// (see rttHost), all of them running while the rounds last. A TUN
// program's CPU time per MB is counted over its own runs only.
func (b *bench) measureIperf(ctx context.Context, l *lab.Lab, mtu int, dir string, start startFunc) error {
	paths := append([]path{kernelPath, socksPath}, b.cfg.tunPaths...)
	if b.cfg.iperfAA {
		paths = append(paths, aaPath)
	}
	fmt.Fprintf(b.log, "== iperf3 rows, MTU %d, interleaved: %d rounds of %d columns\n", mtu, b.cfg.iperfRounds, len(paths))

	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	var cols []*iperfColumn
	for _, p := range paths {
		col := &iperfColumn{p: p, host: l}
		if p.throughTUN() {
			col.host, col.pid, col.err = b.startIperfTUN(ctx, l, p, mtu, dir, start, &cleanups)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if col.err == nil {
				col.cpu0, col.err = cpuTime(col.pid)
			}
		}
		cols = append(cols, col)
	}
	phase := time.Now()
	for _, streams := range b.cfg.streams {
		for _, reverse := range []bool{false, true} {
			if err := b.iperfRounds(ctx, cols, mtu, streams, reverse); err != nil {
				return err
			}
		}
	}
	// Fairness: what each TUN program cost while the others ran (an idle
	// one should cost next to nothing).
	for _, c := range cols {
		if c.pid == 0 || c.err != nil {
			continue
		}
		if cpu, err := cpuTime(c.pid); err == nil {
			fmt.Fprintf(b.log, "%-10s  CPU over its own iperf3 runs %v; while the others ran %v (of %v)\n",
				c.p, c.own.Round(time.Millisecond), (cpu - c.cpu0 - c.own).Round(time.Millisecond), time.Since(phase).Round(time.Second))
		}
	}
	return ctx.Err()
}

// startIperfTUN starts p's TUN program for the iperf3 rounds in a new app
// host of its own and returns that host and the program's pid. What it
// starts is stopped and removed by the functions it adds to cleanups.
func (b *bench) startIperfTUN(ctx context.Context, l *lab.Lab, p path, mtu int, dir string, start startFunc,
	cleanups *[]func()) (*lab.Lab, int, error) {
	h, cleanup, err := b.rttHost(l, mtu)
	if cleanup != nil {
		*cleanups = append(*cleanups, cleanup)
	}
	if err != nil {
		return nil, 0, err
	}
	sub := filepath.Join(dir, h.App) // the TUN program's configuration
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return nil, 0, err
	}
	ts, err := b.startTUN(ctx, h, p, mtu, socksAddr, sub, fmt.Sprintf("iperf-%d-%v", mtu, p), start)
	if err != nil {
		return nil, 0, err
	}
	*cleanups = append(*cleanups, ts.p.stop)
	return h, ts.pid, nil
}

// iperfRounds measures one iperf3 row over the rounds and records every
// column's median, its TUN program's CPU time per MB, and in the log each
// run and each round's ratio to the SOCKS-only run.
func (b *bench) iperfRounds(ctx context.Context, cols []*iperfColumn, mtu, streams int, reverse bool) error {
	r := b.tab.declare(iperfRow(mtu, streams, reverse), throughput, 0)
	out := make([]bool, len(cols))
	for i, c := range cols {
		out[i] = c.err != nil
	}
	tally, err := interleaveIperf(ctx, len(cols), b.cfg.iperfRounds, b.cfg.iperfTime, out,
		func(round, i int) (float64, time.Duration, error, error) {
			c := cols[i]
			var cpu0, cpu1 time.Duration
			var cerr0, cerr1 error
			if c.pid != 0 {
				cpu0, cerr0 = cpuTime(c.pid)
			}
			v, err := b.iperf(ctx, c.host, c.p, streams, reverse)
			if c.pid != 0 {
				cpu1, cerr1 = cpuTime(c.pid)
				c.own += cpu1 - cpu0
			}
			if err != nil {
				fmt.Fprintf(b.log, "%-10s  %s, round %d: error: %v\n", c.p, r.name, round+1, err)
			} else {
				fmt.Fprintf(b.log, "%-10s  %s, round %d: %s Gbit/s\n", c.p, r.name, round+1, throughput.format(v))
			}
			return v, cpu1 - cpu0, errors.Join(cerr0, cerr1), err
		})
	if err != nil {
		return err
	}
	for i, c := range cols {
		t := &tally[i]
		err := c.err
		if err == nil {
			err = t.err
		}
		b.recordRuns(r, c.p, t.runs, err)
		if c.p.throughTUN() {
			v, cerr := t.cpuPerMB()
			if err != nil {
				cerr = err
			}
			b.record(b.tab.declare(iperfCPURow(mtu, streams, reverse), latency, 0), c.p, v, cerr)
		}
	}
	// For the A/A comparisons of the two ways of taking a ratio: each
	// round's ratio to the SOCKS-only run of the same round, their
	// median, and the ratio of the medians (the table's).
	for _, c := range cols {
		if !c.p.throughTUN() {
			continue
		}
		ratios, ok := pairedRatios(r.cells[c.p].runs, r.cells[socksPath].runs)
		if !ok {
			continue
		}
		var each []string
		for _, x := range ratios {
			each = append(each, fmt.Sprintf("%.3f", x))
		}
		med, _ := median(ratios)
		ofMedians, _ := r.ratio(c.p)
		fmt.Fprintf(b.log, "%-10s  %s / socks-only, each round: %s; their median %.3f; ratio of the medians %.3f\n",
			c.p, r.name, strings.Join(each, " "), med, ofMedians)
	}
	return nil
}

// recordRuns records a cell measured in rounds, as record does a single
// value.
func (b *bench) recordRuns(r *row, p path, runs []float64, err error) {
	r.setRuns(p, runs, err)
	if c := r.cells[p]; c.set {
		var each []string
		for _, v := range runs {
			each = append(each, r.kind.format(v))
		}
		fmt.Fprintf(b.log, "%-10s  %s: %s %s, median of %s\n", p, r.name, r.kind.format(c.v), r.kind.unit(), strings.Join(each, " "))
		return
	}
	fmt.Fprintf(b.log, "%-10s  %s: error: %v\n", p, r.name, r.cells[p].err)
}
