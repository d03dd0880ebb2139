package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tunsocks/tunsocks/internal/lab"
)

// config is what the command line sets.
type config struct {
	tunsocks  string        // the tunsocks binary
	mtus      []int         // one lab per MTU; the first also gets the connection rows
	iperfTime time.Duration // each iperf3 run
	workers   []int         // connection-rate worker counts, one row each
	rateTime  time.Duration // connection-rate duration
	rateReps  int           // connection-rate runs per cell (median)
	rtts      int           // round trips for the latency percentiles
	idle      int           // idle connections held open for the RSS row
	skipIperf bool          // no iperf3 rows
	aaCheck   bool          // the tunsocks columns' rate runs go to the SOCKS server directly
	runArgs   string        // extra arguments for tunsocks run
	runEnv    string        // extra environment for tunsocks run
	tunPaths  []path        // tunsocks columns measured: tunPath (gVisor), sysPath (--tcp-stack system)
}

// Targets from the issue: tunsocks against our SOCKS server used directly.
const (
	targetSingleStream = 0.3 // single-stream throughput at MTU 1500, both directions
	targetConnRate     = 0.7 // connections per second
)

type bench struct {
	cfg             config
	log             io.Writer // progress, one line per measurement
	tab             *table
	proxychainsConf string
	tunPid          int // tunsocks run, once started
	serverPid       int // tunsocks server
}

// run measures every row in one lab per MTU. Each lab is removed before the
// next is built, and on every way out.
func (b *bench) run(ctx context.Context) error {
	if removed, err := lab.CleanupStale(); err != nil {
		fmt.Fprintf(b.log, "warning: could not remove a stale lab: %v\n", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(b.log, "removed namespaces of an earlier crashed run: %v\n", removed)
	}
	dir, err := os.MkdirTemp("", "tunsocks-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b.proxychainsConf = filepath.Join(dir, "proxychains.conf")
	conf := fmt.Sprintf("strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks5 %s %d\n",
		socksAddr.Addr(), socksAddr.Port())
	if err := os.WriteFile(b.proxychainsConf, []byte(conf), 0o644); err != nil {
		return err
	}
	// Declare rows up front so the table keeps a stable order.
	for i, mtu := range b.cfg.mtus {
		for _, streams := range []int{1, 4} {
			if b.cfg.skipIperf {
				break
			}
			for _, reverse := range []bool{false, true} {
				target := 0.0
				if mtu == 1500 && streams == 1 {
					target = targetSingleStream
				}
				b.tab.declare(iperfRow(mtu, streams, reverse), throughput, target)
			}
		}
		if i == 0 {
			for _, w := range b.cfg.workers {
				b.tab.declare(connRateRow(b.cfg, w), rate, 0)
			}
			b.tab.declare(connRateBestRow(b.cfg), rate, targetConnRate)
			for _, w := range b.cfg.workers {
				for _, part := range cpuParts {
					b.tab.declare(cpuRow(part, w), latency, 0)
				}
			}
			b.tab.declare(rttRow(b.cfg, 50), latency, 0)
			b.tab.declare(rttRow(b.cfg, 99), latency, 0)
			b.tab.declare(rssIdleRow(mtu), memory, 0)
			b.tab.declare(rssAfterRow(mtu), memory, 0)
			b.tab.declare(rssConnsRow(mtu, b.cfg.idle), memory, 0)
		}
	}
	for i, mtu := range b.cfg.mtus {
		if err := b.runLab(ctx, mtu, i == 0); err != nil {
			return fmt.Errorf("MTU %d: %w", mtu, err)
		}
	}
	return nil
}

func iperfRow(mtu, streams int, reverse bool) string {
	dir := "up"
	if reverse {
		dir = "down"
	}
	s := "stream"
	if streams > 1 {
		s = "streams"
	}
	return fmt.Sprintf("iperf3 TCP %s, %d %s, MTU %d", dir, streams, s, mtu)
}

// connRateMedian runs connRate cfg.rateReps times and returns the median
// rate and the number of connections made in all runs together.
func (b *bench) connRateMedian(ctx context.Context, l *lab.Lab, dial dialFunc, workers int) (median, conns float64, err error) {
	var rates []float64
	for range b.cfg.rateReps {
		start := time.Now()
		v, err := connRate(ctx, l, dial, workers, b.cfg.rateTime)
		if err != nil {
			return 0, 0, err
		}
		rates = append(rates, v)
		conns += v * time.Since(start).Seconds()
	}
	slices.Sort(rates)
	return rates[len(rates)/2], conns, nil
}

// cpuShares is where the CPU time of a connection-rate run went: every
// process of the path's connections shares the machine's 2 cores, so once
// the machine is busy the rate is its CPU divided by the sum of these.
type cpuShares struct {
	machine, server, gen, tunsocks time.Duration
	err                            error
}

// cpuSnapshot reads the cumulative CPU times for p's processes.
func (b *bench) cpuSnapshot(p path) cpuShares {
	var c cpuShares
	var errs [4]error
	c.machine, errs[0] = machineBusy()
	c.gen, errs[1] = cpuTime(os.Getpid())
	if p != kernelPath {
		c.server, errs[2] = cpuTime(b.serverPid)
	}
	if p.throughTunsocks() {
		c.tunsocks, errs[3] = cpuTime(b.tunPid)
	}
	c.err = errors.Join(errs[:]...)
	return c
}

// recordCPU records the CPU time per connection of one connection-rate
// cell (n connections between a and z), per process and for the machine.
func (b *bench) recordCPU(p path, workers int, a, z cpuShares, n float64, err error) {
	if err == nil {
		err = errors.Join(a.err, z.err)
	}
	if err == nil && n <= 0 {
		err = errors.New("no connections")
	}
	rec := func(part string, d time.Duration) {
		b.record(b.tab.declare(cpuRow(part, workers), latency, 0), p, d.Seconds()/n, err)
	}
	rec(cpuParts[0], z.machine-a.machine)
	rec(cpuParts[1], z.gen-a.gen)
	if p != kernelPath {
		rec(cpuParts[2], z.server-a.server)
	}
	if p.throughTunsocks() {
		rec(cpuParts[3], z.tunsocks-a.tunsocks)
	}
}

// cpuParts name the CPU rows, in the order recordCPU records them.
var cpuParts = []string{"machine (all processes and the kernel)", "load generator (client and echo server)", "SOCKS server", "tunsocks"}

func cpuRow(part string, workers int) string {
	return fmt.Sprintf("%s CPU time per connection (%d workers)", part, workers)
}

func connRateRow(c config, workers int) string {
	return fmt.Sprintf("connections/s (connect, 1-byte echo, close; %d workers, median of %d x %v)", workers, c.rateReps, c.rateTime)
}

// connRateBestRow is each path's highest rate over the worker counts: the
// rate a path sustains once enough connections are in flight to hide its
// latency (which the request/response rows report on their own).
func connRateBestRow(c config) string {
	ws := make([]string, len(c.workers))
	for i, w := range c.workers {
		ws[i] = strconv.Itoa(w)
	}
	return fmt.Sprintf("connections/s, best of %s workers", strings.Join(ws, "/"))
}

func rttRow(c config, pct int) string {
	return fmt.Sprintf("1-byte request/response p%d (%d round trips)", pct, c.rtts)
}

func rssIdleRow(mtu int) string { return fmt.Sprintf("tunsocks RSS, idle (MTU %d)", mtu) }
func rssAfterRow(mtu int) string {
	return fmt.Sprintf("tunsocks RSS, idle again after the rows above (MTU %d)", mtu)
}
func rssConnsRow(mtu, n int) string {
	return fmt.Sprintf("tunsocks RSS, %d open idle connections (MTU %d)", n, mtu)
}

// runLab builds a lab at one MTU and measures the three paths in turn:
// kernel forwarding first, then SOCKS without a TUN, then tunsocks (whose
// default route would otherwise swallow the kernel path).
func (b *bench) runLab(ctx context.Context, mtu int, full bool) (err error) {
	fmt.Fprintf(b.log, "== lab at MTU %d\n", mtu)
	l, err := lab.New(lab.Options{MTU: mtu})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing the lab: %w", cerr))
		}
	}()
	var procs []*proc
	var procsMu sync.Mutex
	defer func() {
		procsMu.Lock()
		defer procsMu.Unlock()
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	start := func(ns, name string, args ...string) (*proc, error) {
		var env []string
		if name == b.cfg.tunsocks && len(args) > 0 && args[0] == "run" {
			env = strings.Fields(b.cfg.runEnv)
		}
		p, err := startInEnv(ns, env, name, args...)
		if err != nil {
			return nil, err
		}
		procsMu.Lock()
		procs = append(procs, p)
		procsMu.Unlock()
		return p, nil
	}

	if err := b.prepareKernelPath(l); err != nil {
		return err
	}
	echo, err := startEcho(l)
	if err != nil {
		return err
	}
	defer echo.close()
	iperfd, err := start(l.Remote, "iperf3", "-s", "-B", remoteAddr.String(), "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	if err := waitListening(ctx, l, l.Remote, iperfPort, iperfd); err != nil {
		return err
	}
	server, err := start(l.Proxy, b.cfg.tunsocks, "server", "--listen", socksAddr.String(), "--open")
	if err != nil {
		return err
	}
	if err := waitListening(ctx, l, l.Proxy, socksPort, server); err != nil {
		return err
	}
	if b.serverPid, err = server.pid(); err != nil {
		return err
	}

	for _, p := range []path{kernelPath, socksPath} {
		if err := b.measure(ctx, l, p, mtu, full); err != nil {
			return err
		}
	}

	// tunsocks: the app host loses its route through the proxy host and
	// gets a default route into the TUN instead, once per TCP stack.
	if err := routeDel(l.App, lab.Remote4.Masked(), lab.ProxyDown4.Addr()); err != nil {
		return err
	}
	for _, p := range b.cfg.tunPaths {
		if err := b.measureTunsocks(ctx, l, p, mtu, full, start); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// measureTunsocks runs `tunsocks run` (with --tcp-stack system for sysPath),
// routes the app host into its TUN, fills p's column and stops it again
// (which removes the TUN and its routes).
func (b *bench) measureTunsocks(ctx context.Context, l *lab.Lab, p path, mtu int, full bool, start func(ns, name string, args ...string) (*proc, error)) error {
	args := []string{"run", "--proxy", "socks5://" + socksAddr.String(),
		"--tun", "tsk0", "--mtu", strconv.Itoa(mtu), "--summary-interval", "0"}
	if p == sysPath {
		args = append(args, "--tcp-stack", "system")
	}
	args = append(args, strings.Fields(b.cfg.runArgs)...)
	ts, err := start(l.App, b.cfg.tunsocks, args...)
	if err != nil {
		return err
	}
	defer ts.stop()
	if err := l.RouteDefaultVia("tsk0", 15*time.Second); err != nil {
		return fmt.Errorf("%w\ntunsocks output:\n%s", err, ts.out.String())
	}
	pid, err := ts.pid()
	if err != nil {
		return err
	}
	b.tunPid = pid
	if err := b.probe(ctx, l, p); err != nil {
		return fmt.Errorf("%v path does not work: %w\ntunsocks output:\n%s", p, err, ts.out.String())
	}
	if full {
		time.Sleep(time.Second) // let the probe's flow finish
		v, err := rss(pid)
		b.record(b.tab.declare(rssIdleRow(mtu), memory, 0), p, v, err)
	}
	if err := b.measure(ctx, l, p, mtu, full); err != nil {
		return err
	}
	if full {
		dial, err := dialerFor(p)
		if err != nil {
			return err
		}
		time.Sleep(time.Second) // let the last flows close
		v, err := rss(pid)
		b.record(b.tab.declare(rssAfterRow(mtu), memory, 0), p, v, err)
		r := b.tab.declare(rssConnsRow(mtu, b.cfg.idle), memory, 0)
		conns, err := openIdle(ctx, l, dial, b.cfg.idle, 60*time.Second)
		if err != nil {
			b.record(r, p, 0, err)
		} else {
			time.Sleep(time.Second)
			v, err := rss(pid)
			b.record(r, p, v, err)
			for _, c := range conns {
				c.Close()
			}
		}
	}
	if ts.exited() {
		return fmt.Errorf("tunsocks exited during the benchmark:\n%s", ts.out.String())
	}
	return ctx.Err()
}

// measure fills one path's column. Failures of one measurement are recorded
// in the table; only a cancelled context ends the run.
func (b *bench) measure(ctx context.Context, l *lab.Lab, p path, mtu int, full bool) error {
	if err := b.probe(ctx, l, p); err != nil {
		return fmt.Errorf("%v path does not work: %w", p, err)
	}
	for _, streams := range []int{1, 4} {
		if b.cfg.skipIperf {
			break
		}
		for _, reverse := range []bool{false, true} {
			r := b.tab.declare(iperfRow(mtu, streams, reverse), throughput, 0)
			v, err := b.iperf(ctx, l, p, streams, reverse)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.record(r, p, v, err)
		}
	}
	if !full {
		return nil
	}
	dial, err := dialerFor(p)
	if err != nil {
		return err
	}
	if b.cfg.aaCheck && p.throughTunsocks() {
		// The A/A check: the same path in both columns, measured as far
		// apart as the real comparison, shows how far the ratio moves
		// with nothing to compare (0.92-1.10x over seven runs here).
		if dial, err = dialerFor(socksPath); err != nil {
			return err
		}
	}
	best, bestErr := 0.0, error(nil)
	for _, w := range b.cfg.workers {
		cpu0 := b.cpuSnapshot(p)
		// The median of several runs: one run of a few seconds on a
		// shared 2-core machine moves by 10-20% from run to run.
		v, n, err := b.connRateMedian(ctx, l, dial, w)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.record(b.tab.declare(connRateRow(b.cfg, w), rate, 0), p, v, err)
		b.recordCPU(p, w, cpu0, b.cpuSnapshot(p), n, err)
		if err != nil {
			bestErr = err
		} else if v > best {
			best = v
		}
	}
	if best > 0 {
		bestErr = nil
	}
	b.record(b.tab.declare(connRateBestRow(b.cfg), rate, 0), p, best, bestErr)
	p50, p99, err := rtt(ctx, l, dial, b.cfg.rtts)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.record(b.tab.declare(rttRow(b.cfg, 50), latency, 0), p, p50.Seconds(), err)
	b.record(b.tab.declare(rttRow(b.cfg, 99), latency, 0), p, p99.Seconds(), err)
	return nil
}

func (b *bench) record(r *row, p path, v float64, err error) {
	r.set(p, v, err)
	if err != nil {
		fmt.Fprintf(b.log, "%-10s  %s: error: %v\n", p, r.name, err)
		return
	}
	fmt.Fprintf(b.log, "%-10s  %s: %s %s\n", p, r.name, r.kind.format(v), r.kind.unit())
}

// probe proves a path end to end with one echo, retrying for up to 10 s
// (a TUN that has just come up may drop the first SYN).
func (b *bench) probe(ctx context.Context, l *lab.Lab, p path) error {
	dial, err := dialerFor(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := l.Do(l.App, func() error {
			dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
			defer dcancel()
			c, err := dial(dctx)
			if err != nil {
				return err
			}
			defer c.Close()
			return echoOnce(c, make([]byte, 1))
		})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// prepareKernelPath makes the lab route without a proxy: the proxy host
// forwards, the app host reaches the remote network through it and the
// remote host answers back the same way. Every setting is made inside the
// lab's namespaces; the host's own ip_forward is checked to be untouched.
// Ephemeral ports are widened and TIME_WAIT reuse enabled in all three
// hosts, so the connection-rate rows cannot run out of ports.
func (b *bench) prepareKernelPath(l *lab.Lab) error {
	hostFwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return err
	}
	if err := sysctl(l, l.Proxy, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	for _, ns := range []string{l.App, l.Proxy, l.Remote} {
		if err := sysctl(l, ns, "net/ipv4/ip_local_port_range", "10000 65000"); err != nil {
			return err
		}
		if err := sysctl(l, ns, "net/ipv4/tcp_tw_reuse", "1"); err != nil {
			return err
		}
	}
	if after, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || string(after) != string(hostFwd) {
		return fmt.Errorf("the host's ip_forward changed from %q to %q (err %v): sysctl did not stay inside the lab", hostFwd, after, err)
	}
	if err := routeAdd(l.App, lab.Remote4.Masked(), lab.ProxyDown4.Addr()); err != nil {
		return err
	}
	return routeAdd(l.Remote, lab.AppUplink4.Masked(), lab.ProxyUp4.Addr())
}

// sysctl writes a per-namespace sysctl from a thread inside ns.
func sysctl(l *lab.Lab, ns, key, value string) error {
	err := l.Do(ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns, err)
	}
	return nil
}

func route(dst netip.Prefix, gw netip.Addr) *netlink.Route {
	return &netlink.Route{
		Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Gw:  gw.AsSlice(),
	}
}

func routeAdd(ns string, dst netip.Prefix, gw netip.Addr) error {
	return lab.WithNetlink(ns, func(h *netlink.Handle) error {
		if err := h.RouteAdd(route(dst, gw)); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", dst, gw, ns, err)
		}
		return nil
	})
}

func routeDel(ns string, dst netip.Prefix, gw netip.Addr) error {
	return lab.WithNetlink(ns, func(h *netlink.Handle) error {
		if err := h.RouteDel(route(dst, gw)); err != nil {
			return fmt.Errorf("delete route %s via %s in %s: %w", dst, gw, ns, err)
		}
		return nil
	})
}

// waitListening waits up to 10 s for a TCP listener on port in namespace
// ns, without connecting to it (iperf3 takes a stray connection for a
// test). It reads the namespace's socket table from a thread inside it.
func waitListening(ctx context.Context, l *lab.Lab, ns string, port int, p *proc) error {
	want := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found bool
		err := l.Do(ns, func() error {
			data, err := os.ReadFile("/proc/thread-self/net/tcp")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(data), "\n")[1:] {
				f := strings.Fields(line)
				if len(f) > 3 && strings.HasSuffix(f[1]+" ", want) && f[3] == "0A" {
					found = true
				}
			}
			return nil
		})
		switch {
		case err != nil:
			return err
		case found:
			return nil
		case p.exited():
			return fmt.Errorf("%s exited before listening on port %d:\n%s", p.name, port, p.out.String())
		case time.Now().After(deadline):
			return fmt.Errorf("%s is not listening on port %d in %s after 10 s:\n%s", p.name, port, ns, p.out.String())
		case ctx.Err() != nil:
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
}
