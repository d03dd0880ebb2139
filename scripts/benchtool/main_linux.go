// Command benchtool measures tunsocks against the kernel and against our
// SOCKS server used directly, in a throwaway lab of network namespaces
// (app ── proxy ── remote, see package lab), and prints one markdown table.
// It is a benchmark, not a test: it reports numbers and how they compare
// with the project's targets, and exits 0 whatever they are.
//
// Run it through scripts/bench.sh, which builds tunsocks and this tool and
// installs iperf3 and proxychains4. Needs root. Nothing outside the lab's
// namespaces is touched, and the lab is removed on every way out, also on
// SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("benchtool", flag.ContinueOnError)
	var cfg config
	var mtus string
	fs.StringVar(&cfg.tunsocks, "tunsocks", "", "path of the tunsocks binary (required)")
	fs.StringVar(&mtus, "mtus", "1500,9000", "comma-separated link MTUs, one lab each; the first also gets the connection, latency and memory rows")
	fs.DurationVar(&cfg.iperfTime, "t", 5*time.Second, "duration of each iperf3 run (whole seconds, 1s..60s)")
	var workers string
	streams := "1,4"
	fs.StringVar(&streams, "iperf-streams", streams, "comma-separated iperf3 stream counts, one row each per direction and MTU")
	fs.IntVar(&cfg.iperfRounds, "iperf-rounds", 5, "interleaved rounds of the iperf3 rows: in each round every column runs each row once, in an order that changes so that every column runs after every other equally often, every TUN program running all along in its own app namespace; a column's figure is the median of its runs, the ratio to socks-only the ratio of the medians (1..15; 0: the old way, one run per column, each column in its own phase, minutes apart)")
	fs.BoolVar(&cfg.iperfAA, "iperf-aa", false, "an A/A check of the iperf3 rows: a second tunsocks run (gVisor stack), the same binary and settings, in a column of its own (tunsocks-aa) measured like any other; its ratio to the tunsocks column shows how far the run's noise moves the throughput verdicts")
	fs.StringVar(&workers, "workers", "8,64", "comma-separated parallel worker counts for the connection rate, one row each plus the best (1..256)")
	fs.DurationVar(&cfg.rateTime, "rate-time", 3*time.Second, "duration of the connection-rate run (100ms..60s)")
	fs.IntVar(&cfg.rateReps, "rate-reps", 3, "connection-rate runs per cell; the median is reported (1..9)")
	fs.IntVar(&cfg.rtts, "rtts", 2000, "1-byte round trips for the latency percentiles (100..100000)")
	fs.IntVar(&cfg.rttRounds, "rtt-rounds", 40, "interleaved rounds of the round-trip rows: in each round every column takes a turn of rtts/rounds round trips, the order rotating; percentiles over all of a column's turns (1..50; 0: the old way, each column's round trips in its own phase, minutes apart)")
	fs.IntVar(&cfg.rttProcs, "rtt-procs", 1, "runs of each TUN program side by side for the interleaved round trips, each in its own app namespace with one connection, taking its column's turns in rotation: on a loaded machine a run can stay for seconds in a state that doubles its round trip, which several runs could average out (1..4; 3 did not steady the A/A ratio on the loaded development VM)")
	fs.StringVar(&cfg.aaTunsocks, "aa-tunsocks", "", "with -rtt-aa or -iperf-aa: the tunsocks-aa column runs this binary instead of -tunsocks's, so two builds are compared in one interleaved run (an A/B; the A/A table then reads as their ratio)")
	fs.BoolVar(&cfg.rttAA, "rtt-aa", false, "an A/A check of the round-trip rows: a second tunsocks run (gVisor stack), the same binary and settings, in a column of its own (tunsocks-aa) measured like any other; its ratio to the tunsocks column shows how far the run's noise moves a comparison")
	fs.IntVar(&cfg.idle, "idle-conns", 1000, "idle TCP connections held through each TUN program for the first memory rows (1..9000)")
	fs.IntVar(&cfg.idleMax, "idle-max", 8000, "idle TCP connections for the second memory rows, and poked afterwards (0: none; at most 9000: benchtool holds both ends of each under the 20,000 open-file limit)")
	copySocks := "microsocks"
	fs.StringVar(&copySocks, "copy-socks", copySocks, "SOCKS5 server that copies instead of splicing, for the round-trip and idle-connection rows: microsocks, dante, or none")
	fs.DurationVar(&cfg.bulk, "bulk", 30*time.Second, "bulk transfer (iperf3 --bidir, 4 streams) before the after-bulk RSS row (whole seconds; 0: no row)")
	fs.DurationVar(&cfg.settle, "settle", 30*time.Second, "idle time after the bulk transfer before RSS is read")
	fs.IntVar(&cfg.udpHeld, "udp-held", 500, "UDP flows held open for the per-flow memory row (0: no UDP rows; at most 5000)")
	fs.IntVar(&cfg.udpFlood, "udp-flows", 50000, "new UDP flows offered, one datagram each, for the bounded-flows row (0: none; at most 55000)")
	fs.IntVar(&cfg.udpRate, "udp-rate", 5000, "new UDP flows a second offered in that row (100..100000)")
	fs.Func("peer", "NAME=PATH: also measure another TUN program in its own column, with the same SOCKS server: tun2socks, hev (hev-socks5-tunnel), sing-box (built with the with_gvisor tag); repeatable", func(s string) error {
		p, bin, err := parsePeer(s)
		if err != nil {
			return err
		}
		if cfg.peers == nil {
			cfg.peers = map[path]string{}
		}
		cfg.peers[p] = bin
		return nil
	})
	fs.BoolVar(&cfg.skipIperf, "skip-iperf", false, "skip the iperf3 rows (for working on the connection and latency rows)")
	fs.BoolVar(&cfg.aaCheck, "aa-check", false, "an A/A check of the rate ratio: the tunsocks columns' connection-rate runs go straight to the SOCKS server, so their ratio to the socks-only column shows how far it moves for the same path")
	fs.StringVar(&cfg.heapDir, "heap-profiles", "", "directory for heap profiles of `tunsocks run` (live heap, after a GC; with memstats and the goroutines' stacks) at each idle-connection step and after the bulk transfer; tunsocks runs with --pprof")
	fs.StringVar(&cfg.startHook, "start-hook", "", "command run (and waited for) right after the start row is read, with the column's name and the TUN program's pid as its arguments, outside the lab (e.g. a script saving /proc/PID/smaps for attribution)")
	fs.StringVar(&cfg.runArgs, "run-args", "", "extra arguments for `tunsocks run`, space separated (e.g. \"--cpuprofile /tmp/run.prof\")")
	var stacks string
	fs.StringVar(&stacks, "tcp-stacks", "gvisor,system", "comma-separated TCP stacks of `tunsocks run` to measure, one column each: gvisor, system")
	fs.StringVar(&cfg.runEnv, "run-env", "", "extra environment for `tunsocks run`, space separated K=V (e.g. \"GOGC=200\")")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := cfg.parse(mtus, workers, stacks, copySocks, streams); err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "benchtool: needs root (network namespaces, TUN): run scripts/bench.sh")
		return 1
	}
	for _, tool := range []string{"ip", "iperf3", "proxychains4"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "benchtool: %s is not installed (scripts/bench.sh installs it)\n", tool)
			return 1
		}
	}

	// Every process the benchmark starts inherits this limit (Go would
	// hand children the soft limit it found); the idle-connection rows
	// need thousands of descriptors in the SOCKS server and the TUN
	// programs.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			fmt.Fprintln(os.Stderr, "benchtool: warning: raising the open-file limit:", err)
		}
	}

	b := &bench{cfg: cfg, log: os.Stderr, tab: &table{}}
	for _, p := range tunPaths {
		b.tab.omit[p] = !slices.Contains(cfg.tunPaths, p)
	}
	b.tab.omit[aaPath] = !cfg.rttAA && !cfg.iperfAA
	b.tab.aaOther = cfg.aaTunsocks
	started := time.Now()
	err := b.run(ctx)
	fmt.Printf("\n## tunsocks benchmark\n\n%s\n\n", environment(cfg))
	if cfg.aaCheck {
		fmt.Print("A/A CHECK (-aa-check): the tunsocks columns' connection-rate rows measured the SOCKS-only path, not tunsocks.\n\n")
	}
	b.tab.write(os.Stdout)
	fmt.Printf("\ntargets (issue): single-stream TCP throughput at MTU 1500 >= %.1fx socks-only in both directions; "+
		"connection rate >= %.1fx socks-only; 1-byte round trip p50 through a copying SOCKS server <= %.1fx socks-only; "+
		"the limits above. Peers get ratios, not verdicts. Informational: exit status is 0 whether met or not.\n",
		targetSingleStream, targetConnRate, targetRTT)
	fmt.Printf("total time %v\n", time.Since(started).Round(time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		return 1
	}
	return 0
}

func (c *config) parse(mtus, workers, stacks, copyServer, streams string) error {
	for _, s := range strings.Split(stacks, ",") {
		var p path
		switch strings.TrimSpace(s) {
		case "gvisor":
			p = tunPath
		case "system":
			p = sysPath
		default:
			return fmt.Errorf("-tcp-stacks %q: want gvisor, system or both, like gvisor,system", stacks)
		}
		if !slices.Contains(c.tunPaths, p) {
			c.tunPaths = append(c.tunPaths, p)
		}
	}
	for _, p := range []path{t2sPath, hevPath, singboxPath} {
		if c.peers[p] != "" {
			c.tunPaths = append(c.tunPaths, p)
		}
	}
	switch copyServer {
	case "none", "":
	case "microsocks", "dante":
		bin := map[string]string{"microsocks": "microsocks", "dante": "danted"}[copyServer]
		path, err := exec.LookPath(bin)
		if err != nil {
			return fmt.Errorf("-copy-socks %s: %s is not installed (apt-get install %s, or -copy-socks none)", copyServer, bin,
				map[string]string{"microsocks": "microsocks", "dante": "dante-server"}[copyServer])
		}
		c.copySocks = copySocks{name: copyServer, bin: path}
	default:
		return fmt.Errorf("-copy-socks %q: want microsocks, dante or none", copyServer)
	}
	if c.heapDir != "" {
		if err := os.MkdirAll(c.heapDir, 0o755); err != nil {
			return fmt.Errorf("-heap-profiles: %w", err)
		}
	}
	if c.tunsocks == "" {
		return fmt.Errorf("-tunsocks: the path of the tunsocks binary is required")
	}
	if _, err := os.Stat(c.tunsocks); err != nil {
		return fmt.Errorf("-tunsocks: %w", err)
	}
	for _, s := range strings.Split(mtus, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || m < 1280 || m > 65535 {
			return fmt.Errorf("-mtus %q: want MTUs from 1280 to 65535, like 1500,9000", mtus)
		}
		c.mtus = append(c.mtus, m)
	}
	if len(c.mtus) > 4 {
		return fmt.Errorf("-mtus %q: at most 4 labs", mtus)
	}
	for _, s := range strings.Split(workers, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || w < 1 || w > 256 {
			return fmt.Errorf("-workers %q: want worker counts from 1 to 256, like 8,64", workers)
		}
		c.workers = append(c.workers, w)
	}
	if len(c.workers) > 4 {
		return fmt.Errorf("-workers %q: at most 4 counts", workers)
	}
	for _, s := range strings.Split(streams, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 128 || slices.Contains(c.streams, n) {
			return fmt.Errorf("-iperf-streams %q: want distinct stream counts from 1 to 128, like 1,4", streams)
		}
		c.streams = append(c.streams, n)
	}
	switch {
	case c.iperfTime < time.Second || c.iperfTime > time.Minute || c.iperfTime%time.Second != 0:
		return fmt.Errorf("-t %v: want whole seconds from 1s to 60s", c.iperfTime)
	case c.rateTime < 100*time.Millisecond || c.rateTime > time.Minute:
		return fmt.Errorf("-rate-time %v: want 100ms to 60s", c.rateTime)
	case c.rateReps < 1 || c.rateReps > 9:
		return fmt.Errorf("-rate-reps %d: want 1 to 9", c.rateReps)
	case c.rtts < 100 || c.rtts > 100000:
		return fmt.Errorf("-rtts %d: want 100 to 100000", c.rtts)
	case c.rttRounds < 0 || c.rttRounds > 50:
		return fmt.Errorf("-rtt-rounds %d: want 1 to 50, or 0 for each column in its own phase", c.rttRounds)
	case c.rttProcs < 1 || c.rttProcs > 4:
		return fmt.Errorf("-rtt-procs %d: want 1 to 4", c.rttProcs)
	case c.iperfRounds < 0 || c.iperfRounds > 15:
		return fmt.Errorf("-iperf-rounds %d: want 1 to 15, or 0 for each column in its own phase", c.iperfRounds)
	case c.iperfAA && !slices.Contains(c.tunPaths, tunPath):
		return fmt.Errorf("-iperf-aa: the A/A column repeats the gVisor stack's; want -tcp-stacks with gvisor")
	case c.iperfAA && c.skipIperf:
		return fmt.Errorf("-iperf-aa with -skip-iperf: there are no iperf3 rows to check; drop one of them")
	case c.rttAA && !slices.Contains(c.tunPaths, tunPath):
		return fmt.Errorf("-rtt-aa: the A/A column repeats the gVisor stack's; want -tcp-stacks with gvisor")
	case c.aaTunsocks != "" && !c.rttAA && !c.iperfAA:
		return fmt.Errorf("-aa-tunsocks %s: it runs in the tunsocks-aa column; want -rtt-aa or -iperf-aa with it", c.aaTunsocks)
	case c.idle < 1 || c.idle > 9000:
		return fmt.Errorf("-idle-conns %d: want 1 to 9000", c.idle)
	case c.idleMax < 0 || c.idleMax > 9000:
		return fmt.Errorf("-idle-max %d: want 0 to 9000", c.idleMax)
	case c.bulk < 0 || c.bulk > 10*time.Minute || c.bulk%time.Second != 0:
		return fmt.Errorf("-bulk %v: want whole seconds up to 10m, or 0", c.bulk)
	case c.settle < 0 || c.settle > 10*time.Minute:
		return fmt.Errorf("-settle %v: want 0 to 10m", c.settle)
	case c.udpHeld < 0 || c.udpHeld > 5000:
		return fmt.Errorf("-udp-held %d: want 0 to 5000", c.udpHeld)
	case c.udpFlood < 0 || c.udpFlood > 55000:
		return fmt.Errorf("-udp-flows %d: want 0 to 55000", c.udpFlood)
	case c.udpRate < 100 || c.udpRate > 100000:
		return fmt.Errorf("-udp-rate %d: want 100 to 100000", c.udpRate)
	}
	return nil
}

// environment is one line saying where the numbers come from.
func environment(c config) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	iperf := "iperf3 ?"
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		iperf, _, _ = strings.Cut(string(out), "\n")
		iperf, _, _ = strings.Cut(iperf, " (")
	}
	return fmt.Sprintf("%s, Linux %s, %d CPUs, %s; veth lab app ── proxy ── remote; SOCKS server: `tunsocks server`; "+
		"iperf3 -t %d per run; socks-only iperf3 through proxychains4, other socks-only rows through socksclient; %s; %s",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(kernel)), runtime.NumCPU(), iperf, int(c.iperfTime/time.Second),
		iperfMethod(c), rttMethod(c))
}

// iperfMethod says how the iperf3 rows were measured.
func iperfMethod(c config) string {
	switch {
	case c.skipIperf:
		return "no iperf3 rows (-skip-iperf)"
	case c.iperfRounds == 0:
		return "iperf3 rows measured column by column, one run each, each column in its own phase (-iperf-rounds 0)"
	}
	return fmt.Sprintf("iperf3 rows interleaved: %d rounds, in each every column runs the row once, the order changing so "+
		"that every column runs after every other equally often (a Williams design); each TUN program in its own app namespace, all of them running through the rounds; a column's figure is the median "+
		"of its %d runs, its TUN program's CPU time per MB its CPU over its own runs over the MB they moved; the ratio to "+
		"socks-only is the ratio of the two medians, with (rounds lo-hi) the lowest and highest of the rounds' own ratios "+
		"(each round's run over that round's socks-only run)", c.iperfRounds, c.iperfRounds)
}

// rttMethod says how the round-trip rows were measured.
func rttMethod(c config) string {
	if c.rttRounds == 0 {
		return "1-byte round-trip rows measured column by column, each in its own phase (-rtt-rounds 0)"
	}
	per := strconv.Itoa(c.rtts / c.rttRounds)
	if c.rtts%c.rttRounds != 0 {
		per += "-" + strconv.Itoa(c.rtts/c.rttRounds+1)
	}
	runs := "each TUN program in its own app namespace, all of them running through the rounds"
	if c.rttProcs > 1 {
		runs = fmt.Sprintf("%d runs of each TUN program side by side, each in its own app namespace, taking their column's turns in rotation", c.rttProcs)
	}
	return fmt.Sprintf("1-byte round-trip rows interleaved: %d rounds, in each every column makes %s round trips (after %d unmeasured) "+
		"on its open connection, the order rotating; %s; percentiles over all of a column's samples, the TUN program's switches and CPU "+
		"counted over its own measured round trips only",
		c.rttRounds, per, rttTurnWarmup, runs)
}
