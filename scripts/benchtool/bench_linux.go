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
	tunsocks    string          // the tunsocks binary
	peers       map[path]string // other TUN programs' binaries (-peer)
	copySocks   copySocks       // the copying SOCKS server; name "" for none
	mtus        []int           // one lab per MTU; the first also gets the connection rows
	iperfTime   time.Duration   // each iperf3 run
	streams     []int           // iperf3 stream counts, one row each per direction
	iperfRounds int             // interleaved rounds of the iperf3 rows (0: each column in its own phase)
	iperfAA     bool            // a second tunsocks column in the iperf3 rows
	workers     []int           // connection-rate worker counts, one row each
	rateTime    time.Duration   // connection-rate duration
	rateReps    int             // connection-rate runs per cell (median)
	rtts        int             // round trips for the latency percentiles
	rttRounds   int             // interleaved rounds of them (0: each column in its own phase)
	rttProcs    int             // runs of each TUN program taking the rounds' turns in turn
	rttAA       bool            // a second tunsocks column in the round-trip rows
	aaTunsocks  string          // the binary of that second column, when not tunsocks (an A/B)
	idle        int             // idle connections held open for the first memory row
	idleMax     int             // and for the second (0: no second row)
	bulk        time.Duration   // bulk transfer before the after-bulk RSS row (0: no row)
	settle      time.Duration   // idle time after it
	udpHeld     int             // UDP flows held open for the per-flow memory row (0: no UDP rows)
	udpFlood    int             // new UDP flows offered for the bounded-flows row (0: no row)
	udpRate     int             // new UDP flows a second offered in that row
	skipIperf   bool            // no iperf3 rows
	aaCheck     bool            // the tunsocks columns' rate runs go to the SOCKS server directly
	runArgs     string          // extra arguments for tunsocks run
	heapDir     string          // where tunsocks' heap profiles go ("" for none)
	runEnv      string          // extra environment for tunsocks run
	startHook   string          // command run with the TUN program's pid after the start row ("" for none)
	tunPaths    []path          // TUN columns measured: tunPath (gVisor), sysPath (--tcp-stack system), peers
}

// Targets from the issue: tunsocks against our SOCKS server used directly.
const (
	targetSingleStream = 0.6 // single-stream throughput at MTU 1500, both directions
	targetConnRate     = 0.7 // connections per second
	targetRTT          = 1.1 // 1-byte round trip p50 with a copying SOCKS server (at most)
)

// Limits from the issue on tunsocks' own figures.
const (
	limitStartRSS     = 16 << 20 // RSS at start
	limitAfterBulk    = 1.25     // RSS after bulk and idle, over RSS at start
	limitPerConn      = 12 << 10 // memory per idle TCP connection
	limitRSSAt10k     = 200 << 20
	maxOpenFiles      = 20000            // this machine's hard limit of open files
	udpEchoPort       = 7100             // the remote host's UDP echo service
	udpHeldPortBase   = 2000             // app source ports of the held UDP flows
	udpWarmPort       = 1999             // and of the one flow sent before them
	udpFloodPortBase  = 10000            // and of the offered ones
	idleOpenWorkers   = 8                // goroutines opening and poking idle connections
	idleSettle        = 10 * time.Second // idle before RSS is read: tunsocks gives a burst's memory back after 2-4 s quiet
	idleOpenTimeLimit = 3 * time.Minute
)

type bench struct {
	cfg             config
	log             io.Writer // progress, one line per measurement
	tab             *table
	proxychainsConf string
	tunPid          int // the TUN program, once started
	serverPid       int // tunsocks server
	rttHosts        int // app hosts made for the round trips so far (rttHost)
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
		for _, streams := range b.cfg.streams {
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
		for _, streams := range b.cfg.streams {
			if b.cfg.skipIperf {
				break
			}
			for _, reverse := range []bool{false, true} {
				b.tab.declare(iperfCPURow(mtu, streams, reverse), latency, 0)
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
			b.tab.declare(rttRow(b.cfg, 50, ""), latency, 0)
			b.tab.declare(rttRow(b.cfg, 99, ""), latency, 0)
			if c := b.cfg.copySocks.name; c != "" {
				b.tab.declare(rttRow(b.cfg, 50, c), latency, targetRTT)
				b.tab.declare(rttRow(b.cfg, 99, c), latency, 0)
				b.tab.declare(rttSwitchesRow(c), factor, 0)
				b.tab.declare(rttCPURow(c), latency, 0)
			}
			b.tab.declare(rssStartRow(mtu), memory, 0).limitTo(limitStartRSS)
			b.tab.declare(rssPartRow(rssStartRow(mtu), "anon"), memory, 0)
			b.tab.declare(rssPartRow(rssStartRow(mtu), "file"), memory, 0)
			if b.cfg.bulk > 0 {
				b.tab.declare(rssBulkRow(b.cfg, mtu), memory, 0)
				b.tab.declare(rssPartRow(rssBulkRow(b.cfg, mtu), "anon"), memory, 0)
				b.tab.declare(rssPartRow(rssBulkRow(b.cfg, mtu), "file"), memory, 0)
				b.tab.declare(rssBulkFactorRow(), factor, 0).limitTo(limitAfterBulk)
			}
			for _, n := range b.idleCounts() {
				b.tab.declare(rssConnsRow(mtu, n), memory, 0)
				b.tab.declare(perConnRow(n), perItem, 0).limitTo(limitPerConn)
				b.tab.declare(perConnAnonRow(n), perItem, 0)
			}
			if n := b.cfg.idleMax; n > 0 && b.cfg.copySocks.name != "" {
				b.tab.declare(rssScaledRow(n), memory, 0).limitTo(limitRSSAt10k)
				b.tab.declare(pokedRow(n), count, 0)
			}
			if b.cfg.udpHeld > 0 {
				b.tab.declare(udpHeldRow(b.cfg), count, 0)
				b.tab.declare(perFlowRow(b.cfg), perItem, 0)
			}
			if b.cfg.udpFlood > 0 {
				b.tab.declare(udpFloodRow(b.cfg), memory, 0)
				b.tab.declare(udpFloodAnsweredRow(b.cfg), count, 0)
			}
		}
	}
	for i, mtu := range b.cfg.mtus {
		if err := b.runLab(ctx, mtu, i == 0, dir); err != nil {
			return fmt.Errorf("MTU %d: %w", mtu, err)
		}
	}
	return nil
}

// idleCounts are the numbers of idle connections the memory rows hold.
func (b *bench) idleCounts() []int {
	if b.cfg.copySocks.name == "" {
		return nil
	}
	if b.cfg.idleMax > b.cfg.idle {
		return []int{b.cfg.idle, b.cfg.idleMax}
	}
	return []int{b.cfg.idle}
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

// iperfCPURow is the TUN program's CPU time per MB the iperf3 row moved.
func iperfCPURow(mtu, streams int, reverse bool) string {
	return "TUN program CPU time per MB, " + iperfRow(mtu, streams, reverse)
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
	machine, server, gen, tun time.Duration
	err                       error
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
	if p.throughTUN() {
		c.tun, errs[3] = cpuTime(b.tunPid)
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
	if p.throughTUN() {
		rec(cpuParts[3], z.tun-a.tun)
	}
}

// cpuParts name the CPU rows, in the order recordCPU records them.
var cpuParts = []string{"machine (all processes and the kernel)", "load generator (client and echo server)", "SOCKS server", "TUN program"}

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

// rttRow names a round-trip row; server is the copying SOCKS server when
// the row was measured through it, "" for `tunsocks server`.
func rttRow(c config, pct int, server string) string {
	if server != "" {
		return fmt.Sprintf("1-byte request/response p%d (%d round trips), copying SOCKS server (%s)", pct, c.rtts, server)
	}
	return fmt.Sprintf("1-byte request/response p%d (%d round trips)", pct, c.rtts)
}

func rttSwitchesRow(server string) string {
	return fmt.Sprintf("TUN program context switches per round trip, copying SOCKS server (%s)", server)
}
func rttCPURow(server string) string {
	return fmt.Sprintf("TUN program CPU time per round trip, copying SOCKS server (%s)", server)
}

func rssStartRow(mtu int) string {
	return fmt.Sprintf("TUN program RSS at start, after one connection (MTU %d)", mtu)
}

// rssPartRow is the row of one part of the RSS in row: part is anon
// (RssAnon) or file (RssFile).
func rssPartRow(row, part string) string {
	if part == "anon" {
		return row + ": anonymous part (RssAnon: heap, stacks, written data)"
	}
	return row + ": file-backed part (RssFile: mapped pages of the executable and libraries, shared page cache)"
}
func rssBulkRow(c config, mtu int) string {
	return fmt.Sprintf("TUN program RSS after %v of bulk (iperf3 --bidir, 4 streams) and %v idle (MTU %d)", c.bulk, c.settle, mtu)
}
func rssBulkFactorRow() string { return "RSS after bulk and idle / RSS at start" }
func rssConnsRow(mtu, n int) string {
	return fmt.Sprintf("TUN program RSS, %d open idle TCP connections (fresh process; MTU %d)", n, mtu)
}
func perConnRow(n int) string {
	return fmt.Sprintf("memory per idle TCP connection at %d (RSS with them - RSS before, / %d)", n, n)
}

// perConnAnonRow is perConnRow counting anonymous memory only: code
// pages a program maps for the first time while the connections open
// (tunsocks unmaps start-up's code, and maps back what the idle path
// runs) are not the connections' memory.
func perConnAnonRow(n int) string {
	return fmt.Sprintf("memory per idle TCP connection at %d, anonymous part only (RssAnon with them - RssAnon before, / %d)", n, n)
}
func rssScaledRow(n int) string {
	return fmt.Sprintf("RSS with 10,000 idle TCP connections, scaled from %d", n)
}
func pokedRow(n int) string {
	return fmt.Sprintf("of the %d idle TCP connections, still echoing when poked afterwards", n)
}
func udpHeldRow(c config) string {
	return fmt.Sprintf("UDP flows answered of %d held open (new source ports, %d/s)", c.udpHeld, udpHeldRate)
}
func perFlowRow(c config) string {
	return fmt.Sprintf("memory per UDP flow (RSS with %d held - RSS before, / flows answered)", c.udpHeld)
}

// perFlowAnonRow is perFlowRow counting anonymous memory only, as
// perConnAnonRow does for TCP.
func perFlowAnonRow(c config) string {
	return fmt.Sprintf("memory per UDP flow, anonymous part only (RssAnon with %d held - RssAnon before, / flows answered)", c.udpHeld)
}
func udpFloodRow(c config) string {
	return fmt.Sprintf("TUN program RSS after %d new UDP flows offered (one datagram each, %d/s)", c.udpFlood, c.udpRate)
}
func udpFloodAnsweredRow(c config) string {
	return fmt.Sprintf("of the %d offered UDP flows, answered", c.udpFlood)
}

// runLab builds a lab at one MTU and measures the paths in turn: kernel
// forwarding first, then SOCKS without a TUN, then (in the first lab) the
// round-trip rows of every column in interleaved rounds, then each TUN
// program (whose default route would otherwise swallow the kernel path).
func (b *bench) runLab(ctx context.Context, mtu int, full bool, dir string) (err error) {
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
	if full && b.cfg.copySocks.name != "" {
		name, args, err := b.cfg.copySocks.command(copySocksAddr, lab.ProxyUp4.Addr(), dir)
		if err != nil {
			return err
		}
		cs, err := start(l.Proxy, name, args...)
		if err != nil {
			return err
		}
		if err := waitListening(ctx, l, l.Proxy, copySocksPort, cs); err != nil {
			return err
		}
	}

	if !b.cfg.skipIperf && b.cfg.iperfRounds > 0 {
		if err := b.measureIperf(ctx, l, mtu, dir, start); err != nil {
			return err
		}
	}
	for _, p := range []path{kernelPath, socksPath} {
		if err := b.measure(ctx, l, p, mtu, full); err != nil {
			return err
		}
	}
	if full && b.cfg.rttRounds > 0 {
		if err := b.measureRTT(ctx, l, mtu, dir, "", socksAddr, start); err != nil {
			return err
		}
		if c := b.cfg.copySocks.name; c != "" {
			if err := b.measureRTT(ctx, l, mtu, dir, c, copySocksAddr, start); err != nil {
				return err
			}
		}
	}
	if full && b.cfg.rttRounds == 0 && b.cfg.copySocks.name != "" {
		if err := b.measureCopyRTT(ctx, l, socksPath); err != nil {
			return err
		}
	}

	// The TUN paths: the app host loses its route through the proxy host
	// and gets a default route into the TUN instead, one program at a time.
	if err := routeDel(l.App, lab.Remote4.Masked(), lab.ProxyDown4.Addr()); err != nil {
		return err
	}
	for _, p := range b.cfg.tunPaths {
		if !full && b.cfg.iperfRounds > 0 {
			break // this lab's only rows, the iperf3 rows, are measured
		}
		if err := b.measureTUN(ctx, l, p, mtu, full, dir, start); err != nil {
			return err
		}
	}
	if !b.cfg.skipIperf && b.cfg.iperfRounds == 0 && b.cfg.iperfAA {
		if err := b.measureAAIperfSequential(ctx, l, mtu, dir, start); err != nil {
			return err
		}
	}
	if full && b.cfg.rttRounds == 0 && b.cfg.rttAA {
		if err := b.measureAASequential(ctx, l, mtu, dir, start); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// measureAASequential fills the A/A column's round-trip rows the old way
// (-rtt-rounds 0), after every other column, as a peer's would be: a run
// of it through `tunsocks server`, then one through the copying server.
func (b *bench) measureAASequential(ctx context.Context, l *lab.Lab, mtu int, dir string, start startFunc) error {
	for _, socks := range []netip.AddrPort{socksAddr, copySocksAddr} {
		if socks == copySocksAddr && b.cfg.copySocks.name == "" {
			break
		}
		ts, err := b.startTUN(ctx, l, aaPath, mtu, socks, dir, "aa", start)
		if err != nil {
			return err
		}
		if socks == socksAddr {
			dial, derr := dialerFor(aaPath, socks)
			if derr != nil {
				err = derr
			} else {
				err = b.measureSpliceRTT(ctx, l, aaPath, dial)
			}
		} else {
			err = b.measureCopyRTT(ctx, l, aaPath)
		}
		ts.p.stop()
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

// measureAAIperfSequential fills the A/A column's iperf3 rows the old way
// (-iperf-rounds 0), after every other column, as a peer's would be.
func (b *bench) measureAAIperfSequential(ctx context.Context, l *lab.Lab, mtu int, dir string, start startFunc) error {
	ts, err := b.startTUN(ctx, l, aaPath, mtu, socksAddr, dir, "aa", start)
	if err != nil {
		return err
	}
	defer ts.p.stop()
	return b.iperfSequential(ctx, l, aaPath, mtu)
}

// tunRun is one TUN program running with the app host routed into it.
type tunRun struct {
	p   *proc
	pid int
}

// startTUN starts p's TUN program relaying through the SOCKS server at
// socks (tag, when not "", names this run's output files: see
// tunCommand), brings its device up if the program leaves it down, routes the
// app host's default routes into it, and proves the path with one echo.
func (b *bench) startTUN(ctx context.Context, l *lab.Lab, p path, mtu int, socks netip.AddrPort, dir, tag string, start startFunc) (*tunRun, error) {
	name, args, err := b.tunCommand(p, mtu, socks, dir, tag)
	if err != nil {
		return nil, err
	}
	ts, err := start(l.App, name, args...)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*tunRun, error) {
		ts.stop()
		return nil, fmt.Errorf("%v: %w\n%s output:\n%s", p, err, filepath.Base(name), ts.out.String())
	}
	if p.isPeer() {
		if err := bringUp(l.App, tunDev, 15*time.Second, ts); err != nil {
			return fail(err)
		}
	}
	if err := l.RouteDefaultVia(tunDev, 15*time.Second); err != nil {
		return fail(err)
	}
	pid, err := ts.pid()
	if err != nil {
		return fail(err)
	}
	b.tunPid = pid
	if err := b.probe(ctx, l, p, socksAddr); err != nil {
		return fail(fmt.Errorf("the path does not work: %w", err))
	}
	return &tunRun{p: ts, pid: pid}, nil
}

// measureTUN fills p's column: a run of its TUN program through `tunsocks
// server` for the throughput, connection, bulk and UDP rows, then a fresh
// run through the copying SOCKS server for the idle-connection rows (and,
// with -rtt-rounds 0, each run for its round-trip rows; else measureRTT's
// rounds fill them). Each run is stopped (which removes the TUN and its
// routes) before the next starts.
func (b *bench) measureTUN(ctx context.Context, l *lab.Lab, p path, mtu int, full bool, dir string, start startFunc) error {
	ts, err := b.startTUN(ctx, l, p, mtu, socksAddr, dir, "", start)
	if err != nil {
		return err
	}
	var startRSS float64
	var startErr error
	if full {
		// The start row's connection is not the probe: the probe comes as
		// soon as the device exists, possibly before the program has
		// finished starting (tunsocks unmaps the code only start-up ran
		// when it has, and would unmap the probe's with it). One more
		// echo 1 s later is one connection to a started program.
		time.Sleep(time.Second)
		startErr = b.probe(ctx, l, p, socksAddr)
		time.Sleep(time.Second) // let that flow finish
		var anon, file float64
		if startErr == nil {
			startRSS, anon, file, startErr = rssSplit(ts.pid)
		}
		b.record(b.tab.declare(rssStartRow(mtu), memory, 0), p, startRSS, startErr)
		b.record(b.tab.declare(rssPartRow(rssStartRow(mtu), "anon"), memory, 0), p, anon, startErr)
		b.record(b.tab.declare(rssPartRow(rssStartRow(mtu), "file"), memory, 0), p, file, startErr)
		b.heapProfile(l, p, "start")
		b.runStartHook(p, ts.pid)
	}
	err = b.measure(ctx, l, p, mtu, full)
	if err == nil && full && b.cfg.bulk > 0 {
		err = b.measureBulk(ctx, l, p, mtu, ts, startRSS, startErr)
	}
	if err == nil && full {
		err = b.measureUDP(ctx, l, p, ts)
	}
	if err == nil && ts.p.exited() {
		err = fmt.Errorf("%v: the TUN program exited during the benchmark:\n%s", p, ts.p.out.String())
	}
	ts.p.stop()
	if err != nil || !full || b.cfg.copySocks.name == "" {
		return errors.Join(err, ctx.Err())
	}

	ts, err = b.startTUN(ctx, l, p, mtu, copySocksAddr, dir, "", start)
	if err != nil {
		return err
	}
	defer ts.p.stop()
	if b.cfg.rttRounds == 0 {
		if err := b.measureCopyRTT(ctx, l, p); err != nil {
			return err
		}
	}
	if err := b.measureIdle(ctx, l, p, mtu, ts); err != nil {
		return err
	}
	if ts.p.exited() {
		return fmt.Errorf("%v: the TUN program exited during the benchmark:\n%s", p, ts.p.out.String())
	}
	return ctx.Err()
}

// iperfSequential fills p's iperf3 rows the old way (-iperf-rounds 0):
// one run of each, in p's own phase; the TUN program's CPU time per MB
// is over that run.
func (b *bench) iperfSequential(ctx context.Context, l *lab.Lab, p path, mtu int) error {
	for _, streams := range b.cfg.streams {
		for _, reverse := range []bool{false, true} {
			r := b.tab.declare(iperfRow(mtu, streams, reverse), throughput, 0)
			var cpu0 time.Duration
			var cpuErr error
			if p.throughTUN() {
				cpu0, cpuErr = cpuTime(b.tunPid)
			}
			v, err := b.iperf(ctx, l, p, streams, reverse)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.record(r, p, v, err)
			if p.throughTUN() {
				cpu1, cpuErr1 := cpuTime(b.tunPid)
				mb := v * b.cfg.iperfTime.Seconds() / 8 / 1e6
				cerr := errors.Join(err, cpuErr, cpuErr1)
				if cerr == nil && mb <= 0 {
					cerr = errors.New("nothing moved")
				}
				b.record(b.tab.declare(iperfCPURow(mtu, streams, reverse), latency, 0), p, (cpu1-cpu0).Seconds()/mb, cerr)
			}
		}
	}
	return nil
}

// measure fills one path's column. Failures of one measurement are recorded
// in the table; only a cancelled context ends the run.
func (b *bench) measure(ctx context.Context, l *lab.Lab, p path, mtu int, full bool) error {
	if err := b.probe(ctx, l, p, socksAddr); err != nil {
		return fmt.Errorf("%v path does not work: %w", p, err)
	}
	if !b.cfg.skipIperf && b.cfg.iperfRounds == 0 { // else measureIperf's interleaved rounds
		if err := b.iperfSequential(ctx, l, p, mtu); err != nil {
			return err
		}
	}
	if !full {
		return nil
	}
	dial, err := dialerFor(p, socksAddr)
	if err != nil {
		return err
	}
	if b.cfg.aaCheck && p.throughTUN() {
		// The A/A check: the same path in both columns, measured as far
		// apart as the real comparison, shows how far the ratio moves
		// with nothing to compare (0.92-1.10x over seven runs here).
		if dial, err = dialerFor(socksPath, socksAddr); err != nil {
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
	if b.cfg.rttRounds == 0 { // else measureRTT's interleaved rounds
		return b.measureSpliceRTT(ctx, l, p, dial)
	}
	return nil
}

// measureSpliceRTT fills p's round-trip rows through `tunsocks server` the
// old way: p's round trips alone, in p's own phase (-rtt-rounds 0).
func (b *bench) measureSpliceRTT(ctx context.Context, l *lab.Lab, p path, dial dialFunc) error {
	p50, p99, err := rtt(ctx, l, dial, b.cfg.rtts)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.record(b.tab.declare(rttRow(b.cfg, 50, ""), latency, 0), p, p50.Seconds(), err)
	b.record(b.tab.declare(rttRow(b.cfg, 99, ""), latency, 0), p, p99.Seconds(), err)
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
// (a TUN that has just come up may drop the first SYN); socks is the SOCKS
// server of the socks-only path.
func (b *bench) probe(ctx context.Context, l *lab.Lab, p path, socks netip.AddrPort) error {
	dial, err := dialerFor(p, socks)
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
