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
	kernelPath path = iota // plain IP forwarding through the proxy host, no proxy at all
	socksPath              // the client speaks SOCKS to our server itself, no TUN
	tunPath                // the app knows nothing; its default route is tunsocks' TUN
	sysPath                // the same with --tcp-stack system
	numPaths
)

// tunPaths are the paths through tunsocks, each compared with socksPath.
var tunPaths = []path{tunPath, sysPath}

func (p path) throughTunsocks() bool { return slices.Contains(tunPaths, p) }

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
	}
	return ""
}

type cell struct {
	v   float64
	set bool
	err error
}

// row is one measurement over the three paths. A target, when positive, is
// the least tunsocks/socks-only ratio the project aims for.
type row struct {
	name   string
	kind   kind
	target float64
	cells  [numPaths]cell
}

// table collects the measurements in the order rows were declared.
type table struct {
	rows []*row
	// omit leaves paths out of the printed table (those not measured).
	omit [numPaths]bool
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

// ratio is p/socks-only, when both were measured and comparable.
func (r *row) ratio(p path) (float64, bool) {
	s, t := r.cells[socksPath], r.cells[p]
	if !s.set || !t.set || s.v <= 0 || (r.kind != throughput && r.kind != rate) {
		return 0, false
	}
	return t.v / s.v, true
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

	fmt.Fprintf(w, "\n| tunsocks / socks-only | ratio | target | verdict |\n")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	for _, r := range t.rows {
		if r.kind != throughput && r.kind != rate {
			continue
		}
		for _, p := range tunPaths {
			if !t.omit[p] {
				r.writeRatio(w, p)
			}
		}
	}
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		for _, e := range errs {
			fmt.Fprintln(w, "  "+e)
		}
	}
}

// writeRatio prints r's ratio line for path p against the SOCKS-only path.
func (r *row) writeRatio(w io.Writer, p path) {
	ratio, ok := r.ratio(p)
	name := r.name
	if p == sysPath {
		name += ", --tcp-stack system"
	}
	got, target, verdict := "n/a", "–", ""
	if ok {
		got = fmt.Sprintf("%.3fx", ratio) // three places: 0.298 must not print as a met 0.30
	}
	if r.target > 0 {
		target = fmt.Sprintf(">= %.1fx", r.target)
		switch {
		case !ok:
			verdict = "NOT MEASURED"
		case ratio >= r.target:
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
