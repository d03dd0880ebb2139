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
	fs.StringVar(&workers, "workers", "8,64", "comma-separated parallel worker counts for the connection rate, one row each plus the best (1..256)")
	fs.DurationVar(&cfg.rateTime, "rate-time", 3*time.Second, "duration of the connection-rate run (100ms..60s)")
	fs.IntVar(&cfg.rateReps, "rate-reps", 3, "connection-rate runs per cell; the median is reported (1..9)")
	fs.IntVar(&cfg.rtts, "rtts", 2000, "1-byte round trips for the latency percentiles (100..100000)")
	fs.IntVar(&cfg.idle, "idle-conns", 1000, "idle connections held through tunsocks for the memory row (1..20000)")
	fs.BoolVar(&cfg.skipIperf, "skip-iperf", false, "skip the iperf3 rows (for working on the connection and latency rows)")
	fs.BoolVar(&cfg.aaCheck, "aa-check", false, "an A/A check of the rate ratio: the tunsocks columns' connection-rate runs go straight to the SOCKS server, so their ratio to the socks-only column shows how far it moves for the same path")
	fs.StringVar(&cfg.runArgs, "run-args", "", "extra arguments for `tunsocks run`, space separated (e.g. \"--cpuprofile /tmp/run.prof\")")
	var stacks string
	fs.StringVar(&stacks, "tcp-stacks", "gvisor,system", "comma-separated TCP stacks of `tunsocks run` to measure, one column each: gvisor, system")
	fs.StringVar(&cfg.runEnv, "run-env", "", "extra environment for `tunsocks run`, space separated K=V (e.g. \"GOGC=200\")")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := cfg.parse(mtus, workers, stacks); err != nil {
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

	b := &bench{cfg: cfg, log: os.Stderr, tab: &table{}}
	b.tab.omit[tunPath] = !slices.Contains(cfg.tunPaths, tunPath)
	b.tab.omit[sysPath] = !slices.Contains(cfg.tunPaths, sysPath)
	started := time.Now()
	err := b.run(ctx)
	fmt.Printf("\n## tunsocks benchmark\n\n%s\n\n", environment(cfg))
	if cfg.aaCheck {
		fmt.Print("A/A CHECK (-aa-check): the tunsocks columns' connection-rate rows measured the SOCKS-only path, not tunsocks.\n\n")
	}
	b.tab.write(os.Stdout)
	fmt.Printf("\ntargets (issue): single-stream TCP throughput at MTU 1500 >= %.1fx socks-only in both directions; "+
		"connection rate >= %.1fx socks-only. Informational: exit status is 0 whether met or not.\n", targetSingleStream, targetConnRate)
	fmt.Printf("total time %v\n", time.Since(started).Round(time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		return 1
	}
	return 0
}

func (c *config) parse(mtus, workers, stacks string) error {
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
	switch {
	case c.iperfTime < time.Second || c.iperfTime > time.Minute || c.iperfTime%time.Second != 0:
		return fmt.Errorf("-t %v: want whole seconds from 1s to 60s", c.iperfTime)
	case c.rateTime < 100*time.Millisecond || c.rateTime > time.Minute:
		return fmt.Errorf("-rate-time %v: want 100ms to 60s", c.rateTime)
	case c.rateReps < 1 || c.rateReps > 9:
		return fmt.Errorf("-rate-reps %d: want 1 to 9", c.rateReps)
	case c.rtts < 100 || c.rtts > 100000:
		return fmt.Errorf("-rtts %d: want 100 to 100000", c.rtts)
	case c.idle < 1 || c.idle > 20000:
		return fmt.Errorf("-idle-conns %d: want 1 to 20000", c.idle)
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
		"iperf3 -t %d per run; socks-only iperf3 through proxychains4, other socks-only rows through socksclient",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(kernel)), runtime.NumCPU(), iperf, int(c.iperfTime/time.Second))
}
