// Package metrics keeps tunsocks' counters, gauges and histograms and
// writes them in the Prometheus text exposition format (version 0.0.4), so
// /metrics needs no client library.
//
// A Registry is built in cmd and handed to the components that count; each
// registers its families once, at construction, and keeps the returned
// series (Counter, Gauge, Histogram) for its hot path, where an update is
// one atomic operation. Families whose values live elsewhere (the open
// flows, the netstack's counters) register a collect function that reports
// them at scrape time.
//
// Registration checks the Prometheus conventions: valid names, counters
// ending in _total, no _total on anything else, base units left to the
// caller's names, and no name registered twice. Breaking one is a
// programming error, and the register call panics with the reason.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ContentType is the media type of WriteText's output.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Types of metric families, as the TYPE line spells them.
const (
	TypeCounter   = "counter"
	TypeGauge     = "gauge"
	TypeHistogram = "histogram"
)

var (
	nameRE  = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// Registry holds metric families in registration order. It is safe for
// concurrent use.
type Registry struct {
	mu   sync.Mutex
	fams []*family
	seen map[string]bool
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry { return &Registry{seen: map[string]bool{}} }

// Emit reports one sample of a collected family: its value and its label
// values, in the order of the family's label names.
type Emit func(value float64, labelValues ...string)

type family struct {
	name, help, typ string
	labels          []string
	buckets         []float64 // histograms

	mu     sync.RWMutex
	series map[string]any // joined label values -> *Counter, *Gauge or *Histogram

	collect func(Emit)
}

func (r *Registry) register(name, help, typ string, labels []string, buckets []float64, collect func(Emit)) *family {
	if !nameRE.MatchString(name) {
		panic(fmt.Sprintf("metrics: %q is not a valid metric name", name))
	}
	switch typ {
	case TypeCounter:
		if !strings.HasSuffix(name, "_total") {
			panic(fmt.Sprintf("metrics: counter %q must end in _total", name))
		}
	default:
		if strings.HasSuffix(name, "_total") {
			panic(fmt.Sprintf("metrics: %s %q must not end in _total (only counters do)", typ, name))
		}
	}
	if typ == TypeHistogram {
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(name, s) {
				panic(fmt.Sprintf("metrics: histogram %q must not end in %s", name, s))
			}
		}
		if len(buckets) == 0 || !sort.Float64sAreSorted(buckets) || slices.Contains(buckets, math.Inf(1)) {
			panic(fmt.Sprintf("metrics: histogram %q needs finite buckets in increasing order", name))
		}
	}
	for i, l := range labels {
		if !labelRE.MatchString(l) || strings.HasPrefix(l, "__") {
			panic(fmt.Sprintf("metrics: %q: %q is not a valid label name", name, l))
		}
		if typ == TypeHistogram && l == "le" {
			panic(fmt.Sprintf("metrics: histogram %q must not use the label le", name))
		}
		if slices.Contains(labels[:i], l) {
			panic(fmt.Sprintf("metrics: %q: label %q given twice", name, l))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// A histogram owns name_bucket, name_sum and name_count too.
	owned := []string{name}
	if typ == TypeHistogram {
		owned = append(owned, name+"_bucket", name+"_sum", name+"_count")
	}
	for _, n := range owned {
		if r.seen[n] {
			panic(fmt.Sprintf("metrics: %q registered twice", n))
		}
	}
	for _, n := range owned {
		r.seen[n] = true
	}
	f := &family{name: name, help: help, typ: typ, labels: slices.Clone(labels), buckets: slices.Clone(buckets),
		series: map[string]any{}, collect: collect}
	r.fams = append(r.fams, f)
	return f
}

// with returns the series for values, creating it with mk.
func (f *family) with(values []string, mk func() any) any {
	if len(values) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values (%s), got %d", f.name, len(f.labels), strings.Join(f.labels, ", "), len(values)))
	}
	key := strings.Join(values, "\xff")
	f.mu.RLock()
	s, ok := f.series[key]
	f.mu.RUnlock()
	if ok {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.series[key]; ok {
		return s
	}
	s = mk()
	f.series[key] = s
	return s
}

// CounterVec is a counter family with labels.
type CounterVec struct{ f *family }

// Counter is one series of a counter family.
type Counter struct{ v atomic.Uint64 }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Inc adds 1.
func (c *Counter) Inc() { c.v.Add(1) }

// Value is the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Counter registers a counter family; its name must end in _total.
func (r *Registry) Counter(name, help string, labels ...string) *CounterVec {
	return &CounterVec{r.register(name, help, TypeCounter, labels, nil, nil)}
}

// With returns the series for the label values (in the order of the label
// names), creating it at zero. Callers on a hot path keep the result.
func (v *CounterVec) With(values ...string) *Counter {
	return v.f.with(values, func() any { return new(Counter) }).(*Counter)
}

// GaugeVec is a gauge family with labels.
type GaugeVec struct{ f *family }

// Gauge is one series of a gauge family: an integer that goes up and down.
type Gauge struct{ v atomic.Int64 }

// Add adds n (which may be negative).
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Value is the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// Gauge registers a gauge family.
func (r *Registry) Gauge(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{r.register(name, help, TypeGauge, labels, nil, nil)}
}

// With returns the series for the label values, creating it at zero.
func (v *GaugeVec) With(values ...string) *Gauge {
	return v.f.with(values, func() any { return new(Gauge) }).(*Gauge)
}

// HistogramVec is a histogram family with labels.
type HistogramVec struct{ f *family }

// Histogram is one series of a histogram family.
type Histogram struct {
	upper  []float64       // the family's buckets
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Uint64   // float64 bits
	count  atomic.Uint64
}

// Observe records one value.
func (h *Histogram) Observe(v float64) {
	i := sort.SearchFloat64s(h.upper, v) // first bucket with upper >= v
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			break
		}
	}
	h.count.Add(1)
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Histogram registers a histogram family with the given bucket upper bounds
// (increasing; +Inf is implied).
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *HistogramVec {
	return &HistogramVec{r.register(name, help, TypeHistogram, labels, buckets, nil)}
}

// With returns the series for the label values, creating it empty.
func (v *HistogramVec) With(values ...string) *Histogram {
	return v.f.with(values, func() any {
		return &Histogram{upper: v.f.buckets, counts: make([]atomic.Uint64, len(v.f.buckets)+1)}
	}).(*Histogram)
}

// CounterFunc registers a counter family whose samples collect reports at
// each scrape. The values must never decrease (for a given label set).
func (r *Registry) CounterFunc(name, help string, labels []string, collect func(Emit)) {
	r.register(name, help, TypeCounter, labels, nil, collect)
}

// GaugeFunc registers a gauge family whose samples collect reports at each
// scrape.
func (r *Registry) GaugeFunc(name, help string, labels []string, collect func(Emit)) {
	r.register(name, help, TypeGauge, labels, nil, collect)
}

// DurationBuckets are the bucket bounds, in seconds, of dial and handshake
// duration histograms: 5 ms to 30 s.
var DurationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// sample is one line of output before sorting.
type sample struct {
	labels []string
	value  float64
}

// WriteText writes every family in the text exposition format: families in
// registration order, series sorted by their label values.
func (r *Registry) WriteText(w io.Writer) error {
	r.mu.Lock()
	fams := slices.Clone(r.fams)
	r.mu.Unlock()
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		f.write(bw)
	}
	return bw.Flush()
}

func (f *family) write(w *bufio.Writer) {
	var samples []sample
	var hists []struct {
		labels []string
		h      *Histogram
	}
	if f.collect != nil {
		seen := map[string]int{} // joined label values -> index in samples
		f.collect(func(v float64, values ...string) {
			if len(values) != len(f.labels) {
				panic(fmt.Sprintf("metrics: %s collected %d label values for %d labels", f.name, len(values), len(f.labels)))
			}
			key := strings.Join(values, "\xff")
			if i, ok := seen[key]; ok {
				// Two reports of one series would be a duplicate the
				// scraper rejects; they add up instead.
				samples[i].value += v
				return
			}
			seen[key] = len(samples)
			samples = append(samples, sample{labels: slices.Clone(values), value: v})
		})
	} else {
		f.mu.RLock()
		for key, s := range f.series {
			var values []string
			if len(f.labels) > 0 {
				values = strings.Split(key, "\xff")
			}
			switch s := s.(type) {
			case *Counter:
				samples = append(samples, sample{values, float64(s.Value())})
			case *Gauge:
				samples = append(samples, sample{values, float64(s.Value())})
			case *Histogram:
				hists = append(hists, struct {
					labels []string
					h      *Histogram
				}{values, s})
			}
		}
		f.mu.RUnlock()
	}
	fmt.Fprintf(w, "# HELP %s %s\n", f.name, escapeHelp(f.help))
	fmt.Fprintf(w, "# TYPE %s %s\n", f.name, f.typ)
	less := func(a, b []string) int { return slices.Compare(a, b) }
	slices.SortFunc(samples, func(a, b sample) int { return less(a.labels, b.labels) })
	for _, s := range samples {
		writeSample(w, f.name, f.labels, s.labels, "", "", s.value)
	}
	slices.SortFunc(hists, func(a, b struct {
		labels []string
		h      *Histogram
	}) int {
		return less(a.labels, b.labels)
	})
	for _, hs := range hists {
		h := hs.h
		// Read count first: the buckets then hold at least as many
		// observations, and the cumulative +Inf bucket is made equal to it.
		count := h.count.Load()
		var cum uint64
		for i, ub := range f.buckets {
			cum += h.counts[i].Load()
			writeSample(w, f.name+"_bucket", f.labels, hs.labels, "le", formatFloat(ub), float64(min(cum, count)))
		}
		writeSample(w, f.name+"_bucket", f.labels, hs.labels, "le", "+Inf", float64(count))
		writeSample(w, f.name+"_sum", f.labels, hs.labels, "", "", math.Float64frombits(h.sum.Load()))
		writeSample(w, f.name+"_count", f.labels, hs.labels, "", "", float64(count))
	}
}

func writeSample(w *bufio.Writer, name string, labels, values []string, extraName, extraValue string, v float64) {
	w.WriteString(name)
	if len(labels) > 0 || extraName != "" {
		w.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				w.WriteByte(',')
			}
			w.WriteString(l)
			w.WriteString(`="`)
			w.WriteString(escapeLabel(values[i]))
			w.WriteByte('"')
		}
		if extraName != "" {
			if len(labels) > 0 {
				w.WriteByte(',')
			}
			w.WriteString(extraName)
			w.WriteString(`="`)
			w.WriteString(extraValue)
			w.WriteByte('"')
		}
		w.WriteByte('}')
	}
	w.WriteByte(' ')
	w.WriteString(formatFloat(v))
	w.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }
