package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// path is one way from the app host to the remote host.
type path int

const (
	kernelPath  path = iota // plain IP forwarding through the proxy host, no proxy at all
	socksPath               // the client speaks SOCKS to our server itself, no TUN
	tunPath                 // the app knows nothing; its default route is tunsocks' TUN
	sysPath                 // the same with --tcp-stack system
	t2sPath                 // the same through a peer: tun2socks (-peer tun2socks=PATH)
	hevPath                 // hev-socks5-tunnel (-peer hev=PATH)
	singboxPath             // sing-box with a gVisor tun inbound (-peer sing-box=PATH)
	aaPath                  // a second tunsocks (gVisor stack): round-trip rows (-rtt-aa), iperf3 rows (-iperf-aa)
	numPaths
)

// tunPaths are the paths through a TUN program, each compared with
// socksPath: tunsocks' own and the peers'.
var tunPaths = []path{tunPath, sysPath, t2sPath, hevPath, singboxPath, aaPath}

// throughTUN says the app reaches the remote host through a TUN program.
func (p path) throughTUN() bool { return slices.Contains(tunPaths, p) }

// isPeer says the TUN program is not tunsocks.
func (p path) isPeer() bool { return p == t2sPath || p == hevPath || p == singboxPath }

func (p path) String() string {
	switch p {
	case kernelPath:
		return "kernel"
	case socksPath:
		return "socks-only"
	case tunPath:
		return "tunsocks"
	case sysPath:
		return "tunsocks-system"
	case t2sPath:
		return "tun2socks"
	case hevPath:
		return "hev-socks5-tunnel"
	case singboxPath:
		return "sing-box"
	case aaPath:
		return "tunsocks-aa"
	}
	return fmt.Sprintf("path(%d)", int(p))
}

// kind says what a row measures, and so how its values print and compare.
type kind int

const (
	throughput kind = iota // bits per second; higher is better
	rate                   // per second; higher is better
	latency                // seconds; lower is better
	memory                 // bytes
	perItem                // bytes per connection or flow
	count                  // a number of things
	factor                 // one value over another of the same column
)

func (k kind) format(v float64) string {
	switch k {
	case throughput:
		return fmt.Sprintf("%.2f", v/1e9)
	case rate:
		return fmt.Sprintf("%.0f", v)
	case latency:
		return fmt.Sprintf("%.0f", v*1e6)
	case memory:
		return fmt.Sprintf("%.1f", v/(1<<20))
	case perItem:
		return fmt.Sprintf("%.1f", v/(1<<10))
	case count:
		return fmt.Sprintf("%.0f", v)
	case factor:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprint(v)
}

func (k kind) unit() string {
	switch k {
	case throughput:
		return "Gbit/s"
	case rate:
		return "conn/s"
	case latency:
		return "µs"
	case memory:
		return "MiB"
	case perItem:
		return "KiB"
	case count:
		return ""
	case factor:
		return "x"
	}
	return ""
}

type cell struct {
	v   float64
	set bool
	err error
	// runs are the values of a cell measured in rounds (the iperf3
	// rows), in round order; v is their median.
	runs []float64
}

// row is one measurement over the paths. A target, when positive, is the
// least tunsocks/socks-only ratio the project aims for (for a latency row:
// the most); a limit, when positive, the most the row's value may be in
// tunsocks' own columns.
type row struct {
	name   string
	kind   kind
	target float64
	limit  float64
	cells  [numPaths]cell
}

// limitTo sets r's limit and returns r.
func (r *row) limitTo(v float64) *row {
	r.limit = v
	return r
}

// table collects the measurements in the order rows were declared.
type table struct {
	rows []*row
	// omit leaves paths out of the printed table (those not measured).
	omit [numPaths]bool
	// aaOther, when not "", is the binary the A/A column ran instead of
	// tunsocks' own (-aa-tunsocks): the A/A table is then an A/B.
	aaOther string
}

// declare adds a row (or returns the one already declared with this name).
func (t *table) declare(name string, k kind, target float64) *row {
	for _, r := range t.rows {
		if r.name == name {
			return r
		}
	}
	r := &row{name: name, kind: k, target: target}
	t.rows = append(t.rows, r)
	return r
}

// set records a value, or the error that prevented measuring it.
func (r *row) set(p path, v float64, err error) {
	if err != nil {
		r.cells[p] = cell{err: err}
		return
	}
	r.cells[p] = cell{v: v, set: true}
}

// setRuns records the runs of a cell measured in rounds: its value is
// their median.
func (r *row) setRuns(p path, runs []float64, err error) {
	var v float64
	if err == nil {
		v, err = median(runs)
	}
	r.set(p, v, err)
	if err == nil {
		r.cells[p].runs = slices.Clone(runs)
	}
}

// ratio is p/socks-only, when both were measured and comparable. For
// cells measured in rounds it is the ratio of their medians, the two
// figures the table shows (see roundsSpan for the rounds' own ratios).
func (r *row) ratio(p path) (float64, bool) {
	s, t := r.cells[socksPath], r.cells[p]
	if !s.set || !t.set || s.v <= 0 || (r.kind != throughput && r.kind != rate && r.kind != latency) {
		return 0, false
	}
	return t.v / s.v, true
}

// roundsSpan is the lowest and highest of the per-round ratios p/base
// (each round's run of p over the same round's run of base), when both
// were measured in the same two or more rounds: how far one round's
// comparison, what a single run of each decided before, strays.
func (r *row) roundsSpan(p, base path) (lo, hi float64, ok bool) {
	a, b := r.cells[p], r.cells[base]
	if !a.set || !b.set || len(a.runs) < 2 {
		return 0, 0, false
	}
	ratios, ok := pairedRatios(a.runs, b.runs)
	if !ok {
		return 0, 0, false
	}
	lo, hi = span(ratios)
	return lo, hi, true
}

// write prints the measurement table, the ratios with their targets, and
// every error, as markdown.
func (t *table) write(w io.Writer) {
	var paths []path
	for p := range numPaths {
		if !t.omit[p] {
			paths = append(paths, p)
		}
	}
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = p.String()
	}
	fmt.Fprintf(w, "| measurement | unit | %s |\n", strings.Join(names, " | "))
	fmt.Fprintln(w, "|---|---|"+strings.Repeat("---:|", len(paths)))
	var errs []string
	for _, r := range t.rows {
		vals := make([]string, 0, len(paths))
		for _, p := range paths {
			c := r.cells[p]
			switch {
			case c.set:
				vals = append(vals, r.kind.format(c.v))
			case c.err != nil:
				vals = append(vals, fmt.Sprintf("error[%d]", len(errs)+1))
				errs = append(errs, fmt.Sprintf("[%d] %s, %s: %v", len(errs)+1, r.name, p, c.err))
			default:
				vals = append(vals, "–")
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", r.name, r.kind.unit(), strings.Join(vals, " | "))
	}

	fmt.Fprintf(w, "\n| through the TUN / socks-only | ratio | target | verdict |\n")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	for _, r := range t.rows {
		if r.kind != throughput && r.kind != rate && (r.kind != latency || r.target == 0) {
			continue
		}
		for _, p := range tunPaths {
			// The A/A column has only the rows of its flags; no n/a lines for
			// the others.
			if !t.omit[p] && (p != aaPath || r.cells[p].set) {
				r.writeRatio(w, p)
			}
		}
	}
	if !t.omit[aaPath] {
		t.writeAA(w)
	}
	var limited bool
	for _, r := range t.rows {
		if r.limit <= 0 {
			continue
		}
		if !limited {
			fmt.Fprintf(w, "\n| tunsocks against the issue's limits | value | limit | verdict |\n")
			fmt.Fprintln(w, "|---|---:|---:|---|")
			limited = true
		}
		for _, p := range []path{tunPath, sysPath} {
			if t.omit[p] {
				continue
			}
			c := r.cells[p]
			got, verdict := "n/a", "NOT MEASURED"
			if c.set {
				got = r.kind.format(c.v) + " " + r.kind.unit()
				verdict = "MET"
				if c.v > r.limit {
					verdict = "NOT MET"
				}
			}
			fmt.Fprintf(w, "| %s, %s | %s | <= %s %s | %s |\n", r.name, p, got, r.kind.format(r.limit), r.kind.unit(), verdict)
		}
	}
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		for _, e := range errs {
			fmt.Fprintln(w, "  "+e)
		}
	}
}

// writeAA prints, for every row with both, the A/A column over the
// tunsocks column: the same program measured twice in the same run, so
// how far this ratio strays from 1 is how far the run's noise alone moves
// a comparison between two columns.
func (t *table) writeAA(w io.Writer) {
	what := "the same program twice"
	if t.aaOther != "" {
		what = "A/B: the A/A column ran " + t.aaOther
	}
	fmt.Fprintf(w, "\n| A/A: %s / %s (%s) | ratio |\n", aaPath, tunPath, what)
	fmt.Fprintln(w, "|---|---:|")
	for _, r := range t.rows {
		a, z := r.cells[tunPath], r.cells[aaPath]
		if !a.set || !z.set || a.v <= 0 {
			continue
		}
		got := fmt.Sprintf("%.3fx", z.v/a.v)
		if lo, hi, ok := r.roundsSpan(aaPath, tunPath); ok {
			got += fmt.Sprintf(" (rounds %.3f-%.3f)", lo, hi)
		}
		fmt.Fprintf(w, "| %s | %s |\n", r.name, got)
	}
}

// writeRatio prints r's ratio line for path p against the SOCKS-only path.
func (r *row) writeRatio(w io.Writer, p path) {
	ratio, ok := r.ratio(p)
	name := r.name
	if p != tunPath {
		name += ", " + p.String()
	}
	got, target, verdict := "n/a", "–", ""
	if ok {
		got = fmt.Sprintf("%.3fx", ratio) // three places: 0.298 must not print as a met 0.30
		if lo, hi, ok := r.roundsSpan(p, socksPath); ok {
			got += fmt.Sprintf(" (rounds %.3f-%.3f)", lo, hi)
		}
	}
	if r.target > 0 && !p.isPeer() {
		lower := r.kind == latency // lower is better: the target is a most
		target = fmt.Sprintf(">= %.1fx", r.target)
		if lower {
			target = fmt.Sprintf("<= %.1fx", r.target)
		}
		switch {
		case !ok:
			verdict = "NOT MEASURED"
		case ratio >= r.target && !lower, ratio <= r.target && lower:
			verdict = "MET"
		default:
			verdict = "NOT MET"
		}
	}
	fmt.Fprintf(w, "| %s | %s | %s | %s |\n", name, got, target, verdict)
}

// iperfResult is the part of `iperf3 -J` output the benchmark reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// parseIperf returns the receiver's throughput, in bits per second, from the
// JSON report of an iperf3 client (anything before the first '{', such as a
// wrapper's chatter, is skipped).
func parseIperf(out []byte) (float64, error) {
	i := strings.IndexByte(string(out), '{')
	if i < 0 {
		return 0, fmt.Errorf("iperf3 printed no JSON report: %q", truncate(string(out), 300))
	}
	var res iperfResult
	if err := json.Unmarshal(out[i:], &res); err != nil {
		return 0, fmt.Errorf("iperf3 report: %w", err)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	bps := res.End.SumReceived.BitsPerSecond
	if bps <= 0 || math.IsNaN(bps) || math.IsInf(bps, 0) {
		return 0, errors.New("iperf3 report has no received throughput")
	}
	return bps, nil
}

// percentile returns the q-quantile (0 < q <= 1) of d by the nearest-rank
// method; d is sorted in place.
func percentile(d []time.Duration, q float64) (time.Duration, error) {
	if len(d) == 0 {
		return 0, errors.New("no samples")
	}
	if q <= 0 || q > 1 {
		return 0, fmt.Errorf("quantile %v out of (0, 1]", q)
	}
	slices.Sort(d)
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[max(i, 0)], nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
