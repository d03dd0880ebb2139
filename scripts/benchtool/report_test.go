package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseIperf(t *testing.T) {
	got, err := parseIperf([]byte(`chatter {"end":{"sum_sent":{"bits_per_second":2e9},"sum_received":{"bits_per_second":1.5e9}}}`))
	if err != nil || got != 1.5e9 {
		t.Fatalf("parseIperf = %v, %v; want the receiver's 1.5e9", got, err)
	}
	for _, bad := range []string{
		``,
		`iperf3: error - unable to connect`,
		`{"error":"unable to connect to server: Connection refused"}`,
		`{"end":{}}`,
		`{"end":`,
	} {
		if v, err := parseIperf([]byte(bad)); err == nil {
			t.Errorf("parseIperf(%q) = %v, want an error", bad, v)
		}
	}
}

func TestPercentile(t *testing.T) {
	d := make([]time.Duration, 0, 100)
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.99: 99, 1: 100, 0.001: 1} {
		if got, err := percentile(d, q); err != nil || got != want {
			t.Errorf("percentile(1..100, %v) = %v, %v; want %v", q, got, err, want)
		}
	}
	if _, err := percentile(nil, 0.5); err == nil {
		t.Error("percentile of no samples: want an error")
	}
	if _, err := percentile(d, 0); err == nil {
		t.Error("quantile 0: want an error")
	}
}

func TestTableVerdicts(t *testing.T) {
	tab := ownTable()
	met := tab.declare("met", throughput, 0.3)
	met.set(socksPath, 10e9, nil)
	met.set(tunPath, 4e9, nil)
	notMet := tab.declare("not met", rate, 0.7)
	notMet.set(socksPath, 1000, nil)
	notMet.set(tunPath, 500, nil)
	missing := tab.declare("missing", throughput, 0.3)
	missing.set(socksPath, 1e9, nil)
	missing.set(tunPath, 0, errors.New("boom"))
	mem := tab.declare("rss", memory, 0)
	mem.set(tunPath, 20<<20, nil)
	if tab.declare("met", throughput, 0) != met {
		t.Fatal("declaring a row twice made a second row")
	}

	s := writeTableWanting(t, tab,
		"| met | Gbit/s | – | 10.00 | 4.00 |",
		"| met | 0.400x | >= 0.3x | MET |",
		"| not met | 0.500x | >= 0.7x | NOT MET |",
		"| missing | n/a | >= 0.3x | NOT MEASURED |",
		"| missing | Gbit/s | – | 1.00 | error[1] |",
		"[1] missing, tunsocks: boom",
		"| rss | MiB | – | – | 20.0 |",
	)
	if strings.Contains(s, "| rss | n/a") {
		t.Errorf("memory rows must not get a ratio:\n%s", s)
	}
}

// ownTable is a table of tunsocks' own columns, the peers left out.
func ownTable() *table {
	tab := &table{}
	for _, p := range []path{t2sPath, hevPath, singboxPath, aaPath} {
		tab.omit[p] = true
	}
	return tab
}

func TestTableSystemStackColumn(t *testing.T) {
	tab := ownTable()
	r := tab.declare("rate", rate, 0.7)
	r.set(socksPath, 1000, nil)
	r.set(tunPath, 600, nil)
	r.set(sysPath, 750, nil)
	writeTableWanting(t, tab,
		"| measurement | unit | kernel | socks-only | tunsocks | tunsocks-system |",
		"| rate | conn/s | – | 1000 | 600 | 750 |",
		"| rate | 0.600x | >= 0.7x | NOT MET |",
		"| rate, tunsocks-system | 0.750x | >= 0.7x | MET |",
	)

	// A path not measured is left out of both tables.
	tab.omit[sysPath] = true
	if s := writeTableWanting(t, tab, "| rate | conn/s | – | 1000 | 600 |\n"); strings.Contains(s, "system") {
		t.Errorf("omitted column still printed:\n%s", s)
	}
}

func TestTablePeersLatencyAndLimits(t *testing.T) {
	tab := ownTable()
	tab.omit[hevPath] = false
	rtt := tab.declare("rtt", latency, 1.1)
	rtt.set(socksPath, 100e-6, nil)
	rtt.set(tunPath, 105e-6, nil)
	rtt.set(sysPath, 150e-6, nil)
	rtt.set(hevPath, 90e-6, nil)
	cpu := tab.declare("cpu", latency, 0) // no target: no ratio line
	cpu.set(socksPath, 1e-4, nil)
	cpu.set(tunPath, 2e-4, nil)
	start := tab.declare("start", memory, 0).limitTo(16 << 20)
	start.set(tunPath, 12<<20, nil)
	start.set(sysPath, 20<<20, nil)
	start.set(hevPath, 3<<20, nil)
	per := tab.declare("per conn", perItem, 0).limitTo(12 << 10)
	per.set(tunPath, 13<<10, nil)
	s := writeTableWanting(t, tab,
		"| measurement | unit | kernel | socks-only | tunsocks | tunsocks-system | hev-socks5-tunnel |",
		"| rtt | µs | – | 100 | 105 | 150 | 90 |",
		"| rtt | 1.050x | <= 1.1x | MET |",
		"| rtt, tunsocks-system | 1.500x | <= 1.1x | NOT MET |",
		"| rtt, hev-socks5-tunnel | 0.900x | – |  |", // peers get ratios, no verdict
		"| start, tunsocks | 12.0 MiB | <= 16.0 MiB | MET |",
		"| start, tunsocks-system | 20.0 MiB | <= 16.0 MiB | NOT MET |",
		"| per conn, tunsocks | 13.0 KiB | <= 12.0 KiB | NOT MET |",
		"| per conn, tunsocks-system | n/a | <= 12.0 KiB | NOT MEASURED |",
	)
	for _, bad := range []string{"| cpu | 2.000x", "start, hev"} {
		if strings.Contains(s, bad) {
			t.Errorf("table has %q:\n%s", bad, s)
		}
	}
}

// writeTableWanting writes tab, reports each wanted line it lacks, and
// returns what it wrote.
func writeTableWanting(t *testing.T, tab *table, wants ...string) string {
	t.Helper()
	var out bytes.Buffer
	tab.write(&out)
	s := out.String()
	for _, want := range wants {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	return s
}

// TestTableAAColumn: the A/A column (-rtt-aa) gets its own ratio to the
// tunsocks column in the rows it was measured in, and no n/a lines for
// the rows it never is.
func TestTableAAColumn(t *testing.T) {
	tab := ownTable()
	tab.omit[aaPath] = false
	tp := tab.declare("tp", throughput, 0.6)
	tp.set(socksPath, 10e9, nil)
	tp.set(tunPath, 5e9, nil)
	rtt := tab.declare("rtt", latency, 1.1)
	rtt.set(socksPath, 100e-6, nil)
	rtt.set(tunPath, 200e-6, nil)
	rtt.set(aaPath, 210e-6, nil)
	s := writeTableWanting(t, tab,
		"| measurement | unit | kernel | socks-only | tunsocks | tunsocks-system | tunsocks-aa |",
		"| rtt, tunsocks-aa | 2.100x | <= 1.1x | NOT MET |",
		"| A/A: tunsocks-aa / tunsocks (the same program twice) | ratio |",
		"| rtt | 1.050x |\n",
	)
	for _, bad := range []string{"| tp, tunsocks-aa", "| tp | 0.000x"} {
		if strings.Contains(s, bad) {
			t.Errorf("table has %q:\n%s", bad, s)
		}
	}
	// With -aa-tunsocks the column ran another build: the table says so.
	tab.aaOther = "/tmp/ts-new"
	writeTableWanting(t, tab, "| A/A: tunsocks-aa / tunsocks (A/B: the A/A column ran /tmp/ts-new) | ratio |")
	tab.aaOther = ""
	tab.omit[aaPath] = true
	if s := writeTableWanting(t, tab); strings.Contains(s, "A/A") || strings.Contains(s, "aa") {
		t.Errorf("A/A column printed though not measured:\n%s", s)
	}
}

// TestTableRounds: a row measured in rounds shows each column's median,
// the ratio of the medians with the rounds' own lowest and highest
// ratios, and the A/A column's ratio to tunsocks with its rounds' span;
// a cell measured once gets no span.
func TestTableRounds(t *testing.T) {
	tab := ownTable()
	tab.omit[aaPath] = false
	tp := tab.declare("tp", throughput, 0.6)
	tp.setRuns(socksPath, []float64{10e9, 8e9, 9e9}, nil)  // median 9
	tp.setRuns(tunPath, []float64{5.5e9, 5e9, 5.6e9}, nil) // median 5.5; rounds 0.55 0.625 0.622
	tp.setRuns(aaPath, []float64{6e9, 4e9, 5e9}, nil)      // median 5; rounds 1.091 0.8 0.893 of tunsocks'
	tp.setRuns(sysPath, []float64{5e9}, errors.New("iperf3: server busy"))
	once := tab.declare("once", throughput, 0)
	once.set(socksPath, 10e9, nil)
	once.setRuns(tunPath, []float64{7e9}, nil) // one round: nothing to span
	s := writeTableWanting(t, tab,
		"| tp | Gbit/s | – | 9.00 | 5.50 | error[1] | 5.00 |",
		"| tp | 0.611x (rounds 0.550-0.625) | >= 0.6x | MET |",
		"| tp, tunsocks-aa | 0.556x (rounds 0.500-0.600) | >= 0.6x | NOT MET |",
		"| tp, tunsocks-system | n/a | >= 0.6x | NOT MEASURED |",
		"| tp | 0.909x (rounds 0.800-1.091) |",
		"| once | 0.700x | – |  |",
		"[1] tp, tunsocks-system: iperf3: server busy",
	)
	if strings.Contains(s, "| once | 0.700x (rounds") {
		t.Errorf("a row of single runs got a rounds span:\n%s", s)
	}
	if c := tp.cells[sysPath]; c.set || c.runs != nil {
		t.Errorf("a failed cell kept a value or runs: %+v", c)
	}
}
