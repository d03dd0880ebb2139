package metrics

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// sampleRegistry has one family of each kind, with awkward label values.
func sampleRegistry() *Registry {
	r := NewRegistry()
	r.GaugeFunc("tunsocks_build_info", "Build information; the value is always 1.", []string{"version", "goversion"},
		func(emit Emit) { emit(1, "v1.2.3", "go1.26") })
	c := r.Counter("tunsocks_connections_total", "Flows opened.", "network", "outbound")
	c.With("tcp", "corp").Add(3)
	c.With("udp", "DIRECT").Inc()
	c.With("tcp", `we"ird\name`+"\n").Inc()
	g := r.Gauge("tunsocks_connections_active", "Flows open now.", "network")
	g.With("tcp").Add(5)
	g.With("tcp").Add(-2)
	h := r.Histogram("tunsocks_dial_duration_seconds", "Time to dial an outbound.", []float64{0.01, 0.1, 1}, "outbound")
	// Exact in binary, so the sum is exact.
	for _, v := range []float64{0.0078125, 0.0078125, 0.0625, 0.5, 7} {
		h.With("corp").Observe(v)
	}
	r.CounterFunc("tunsocks_bytes_total", "Payload bytes.", []string{"direction"}, func(emit Emit) {
		emit(10, "up")
		emit(5, "up") // a second report of one series adds up
		emit(7, "down")
	})
	return r
}

const sampleText = `# HELP tunsocks_build_info Build information; the value is always 1.
# TYPE tunsocks_build_info gauge
tunsocks_build_info{version="v1.2.3",goversion="go1.26"} 1
# HELP tunsocks_connections_total Flows opened.
# TYPE tunsocks_connections_total counter
tunsocks_connections_total{network="tcp",outbound="corp"} 3
tunsocks_connections_total{network="tcp",outbound="we\"ird\\name\n"} 1
tunsocks_connections_total{network="udp",outbound="DIRECT"} 1
# HELP tunsocks_connections_active Flows open now.
# TYPE tunsocks_connections_active gauge
tunsocks_connections_active{network="tcp"} 3
# HELP tunsocks_dial_duration_seconds Time to dial an outbound.
# TYPE tunsocks_dial_duration_seconds histogram
tunsocks_dial_duration_seconds_bucket{outbound="corp",le="0.01"} 2
tunsocks_dial_duration_seconds_bucket{outbound="corp",le="0.1"} 3
tunsocks_dial_duration_seconds_bucket{outbound="corp",le="1"} 4
tunsocks_dial_duration_seconds_bucket{outbound="corp",le="+Inf"} 5
tunsocks_dial_duration_seconds_sum{outbound="corp"} 7.578125
tunsocks_dial_duration_seconds_count{outbound="corp"} 5
# HELP tunsocks_bytes_total Payload bytes.
# TYPE tunsocks_bytes_total counter
tunsocks_bytes_total{direction="down"} 7
tunsocks_bytes_total{direction="up"} 15
`

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleRegistry().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if b.String() != sampleText {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), sampleText)
	}
	if err := Check(strings.NewReader(b.String())); err != nil {
		t.Errorf("Check of WriteText's own output: %v", err)
	}
}

func TestRegisterRefusesBadFamilies(t *testing.T) {
	for name, reg := range map[string]func(r *Registry){
		"counter without _total":   func(r *Registry) { r.Counter("x_bytes", "h") },
		"gauge with _total":        func(r *Registry) { r.Gauge("x_total", "h") },
		"bad name":                 func(r *Registry) { r.Gauge("x-y", "h") },
		"bad label":                func(r *Registry) { r.Gauge("x", "h", "a-b") },
		"reserved label":           func(r *Registry) { r.Gauge("x", "h", "__a") },
		"label twice":              func(r *Registry) { r.Gauge("x", "h", "a", "a") },
		"histogram le label":       func(r *Registry) { r.Histogram("x", "h", []float64{1}, "le") },
		"histogram _count name":    func(r *Registry) { r.Histogram("x_count", "h", []float64{1}) },
		"histogram no buckets":     func(r *Registry) { r.Histogram("x", "h", nil) },
		"histogram unsorted":       func(r *Registry) { r.Histogram("x", "h", []float64{2, 1}) },
		"registered twice":         func(r *Registry) { r.Gauge("x", "h"); r.Gauge("x", "h") },
		"clash with histogram sum": func(r *Registry) { r.Histogram("x", "h", []float64{1}); r.Gauge("x_sum", "h") },
		"wrong label count":        func(r *Registry) { r.Gauge("x", "h", "a").With("1", "2") },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			reg(NewRegistry())
		})
	}
}

func TestCheckFindsProblems(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"no _total":    {"# HELP a_bytes h\n# TYPE a_bytes counter\na_bytes 1\n", "should end in _total"},
		"gauge _total": {"# HELP a_total h\n# TYPE a_total gauge\na_total 1\n", "should not end in _total"},
		"no TYPE":      {"# HELP a h\na 1\n", "before its TYPE"},
		"no HELP":      {"# TYPE a gauge\na 1\n", "before its HELP"},
		"duplicate":    {"# HELP a h\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", "duplicate series"},
		"split": {"# HELP a h\n# TYPE a gauge\n# HELP b h\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 1\n",
			"not together"},
		"camel": {"# HELP aB h\n# TYPE aB gauge\naB 1\n", "snake_case"},
		"value": {"# HELP a h\n# TYPE a gauge\na one\n", "not a number"},
		"not cumulative": {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
			"not cumulative"},
		"inf differs": {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
			"differs from _count"},
		"no inf":         {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"},
		"negative count": {"# HELP a_total h\n# TYPE a_total counter\na_total -1\n", "negative"},
		"bad escape":     {"# HELP a h\n# TYPE a gauge\na{x=\"\\q\"} 1\n", "bad escape"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Check(strings.NewReader(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestConcurrentUpdates counts from many goroutines while scraping; -race
// checks the locking, the totals check that no update is lost.
func TestConcurrentUpdates(t *testing.T) {
	r := NewRegistry()
	c := r.Counter("c_total", "h", "k")
	h := r.Histogram("h_seconds", "h", DurationBuckets, "k")
	const workers, n = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := []string{"a", "b"}[w%2]
			for i := range n {
				c.With(k).Inc()
				h.With(k).Observe(float64(i) / 1000)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			var b bytes.Buffer
			if err := r.WriteText(&b); err != nil {
				t.Error(err)
				return
			}
			if err := Check(&b); err != nil {
				t.Errorf("mid-update scrape: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	<-done
	if got := c.With("a").Value() + c.With("b").Value(); got != workers*n {
		t.Errorf("counted %d, want %d", got, workers*n)
	}
	if got := h.With("a").Count() + h.With("b").Count(); got != workers*n {
		t.Errorf("observed %d, want %d", got, workers*n)
	}
}

// TestPromtool runs Prometheus' own linter over the output.
func TestPromtool(t *testing.T) {
	promtool := testenv.NeedTool(t, "promtool", "prometheus")
	var b bytes.Buffer
	if err := sampleRegistry().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if err := runPromtool(promtool, b.Bytes()); err != nil {
		t.Error(err)
	}
}

// runPromtool pipes text into `promtool check metrics`.
func runPromtool(promtool string, text []byte) error {
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return &promtoolError{out: string(out), err: err}
	}
	return nil
}

type promtoolError struct {
	out string
	err error
}

func (e *promtoolError) Error() string {
	return "promtool check metrics: " + e.err.Error() + ":\n" + e.out
}
