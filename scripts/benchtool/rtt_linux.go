package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/netns"
)

// startFunc starts a long-running process in a lab namespace, stopped when
// the lab is removed.
type startFunc = func(ns, name string, args ...string) (*proc, error)

// measureRTT fills the round-trip rows of every column through one SOCKS
// server (server is the copying server's name, "" for `tunsocks server`)
// in one interleaved phase (see rounds.go). The kernel and SOCKS-only
// columns run from the lab's app host, so the phase comes before the TUN
// programs take its default route; each TUN program runs in an app host
// of its own, linked to the proxy host like the lab's, all of them
// through the same SOCKS and echo servers, and all running while the
// rounds last (an idle one takes no CPU).
func (b *bench) measureRTT(ctx context.Context, l *lab.Lab, mtu int, dir, server string, socks netip.AddrPort, start startFunc) (err error) {
	paths := []path{socksPath}
	if server == "" {
		paths = []path{kernelPath, socksPath}
	}
	paths = append(paths, b.cfg.tunPaths...)
	if b.cfg.rttAA {
		paths = append(paths, aaPath)
	}
	label := server
	if label == "" {
		label = "tunsocks server"
	}
	fmt.Fprintf(b.log, "== round trips through %s, interleaved: %d rounds of %d columns\n", label, b.cfg.rttRounds, len(paths))

	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	var cols []*rttColumn
	var failed []*rttColumn // columns that could not start: their rows get the error
	// For the log: the CPU time of each TUN program run over the whole
	// phase (its turns, warm-ups, and idle while the others had theirs).
	phaseCPU := map[*rttColumn][]func() time.Duration{}
	for _, p := range paths {
		col := &rttColumn{p: p}
		n := 1
		if p.throughTUN() {
			n = b.cfg.rttProcs
		}
		var inst []rttInstance
		for k := range n {
			tag := fmt.Sprintf("rtt-%s-%v-%d", strings.ReplaceAll(label, " ", "-"), p, k+1)
			in, err := b.startRTTInstance(ctx, l, p, mtu, dir, socks, tag, start, &cleanups)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				col.err = err
				break
			}
			inst = append(inst, in)
			if pid := in.pid; pid != 0 {
				_, cpu0, _ := threadCounters(pid)
				phaseCPU[col] = append(phaseCPU[col], func() time.Duration {
					_, cpu1, _ := threadCounters(pid)
					return cpu1 - cpu0
				})
			}
		}
		if col.err != nil {
			failed = append(failed, col)
			continue
		}
		// Each turn goes to the column's next instance.
		cur, turns := inst[0], 0
		col.turnStart = func() error {
			cur = inst[turns%len(inst)]
			turns++
			return nil
		}
		buf := make([]byte, 1)
		col.trip = func() (time.Duration, error) {
			t0 := time.Now()
			err := echoOnce(cur.c, buf)
			return time.Since(t0), err
		}
		if cur.pid != 0 {
			col.counters = func() (float64, time.Duration, error) { return threadCounters(cur.pid) }
		}
		cols = append(cols, col)
	}
	if err := interleave(ctx, cols, b.cfg.rttRounds, b.cfg.rtts); err != nil {
		return err
	}

	r50 := b.tab.declare(rttRow(b.cfg, 50, server), latency, 0)
	r99 := b.tab.declare(rttRow(b.cfg, 99, server), latency, 0)
	for _, col := range cols {
		var meds []string
		for _, m := range col.tally.turnMedians() {
			meds = append(meds, strconv.FormatInt(m.Microseconds(), 10))
		}
		fmt.Fprintf(b.log, "%-10s  p50 of each turn: %s µs\n", col.p, strings.Join(meds, " "))
	}
	for _, col := range append(cols, failed...) {
		p50, p99, err := col.tally.percentiles()
		if col.err != nil {
			err = col.err
		}
		b.record(r50, col.p, p50.Seconds(), err)
		b.record(r99, col.p, p99.Seconds(), err)
		if server == "" || !col.p.throughTUN() {
			continue
		}
		sw, cpu, cerr := col.tally.perTrip()
		if err == nil {
			err = cerr
		}
		b.record(b.tab.declare(rttSwitchesRow(server), factor, 0), col.p, sw, err)
		b.record(b.tab.declare(rttCPURow(server), latency, 0), col.p, cpu.Seconds(), err)
		if err == nil {
			var runs []string
			for _, f := range phaseCPU[col] {
				runs = append(runs, f().Round(time.Millisecond).String())
			}
			fmt.Fprintf(b.log, "%-10s  CPU over its measured round trips %v; each run's over the whole phase: %s\n",
				col.p, col.tally.cpu.Round(time.Millisecond), strings.Join(runs, " "))
		}
	}
	return nil
}

// rttInstance is one connection of a column, through one run of its TUN
// program (pid 0 for a column without one).
type rttInstance struct {
	c   net.Conn
	pid int
}

// startRTTInstance opens a connection of p's column: for a TUN column, in
// a new app host where a new run of its TUN program relays through socks
// (tag names the run's output files, see tunCommand). What it starts is
// stopped and removed by the functions it adds to cleanups.
func (b *bench) startRTTInstance(ctx context.Context, l *lab.Lab, p path, mtu int, dir string, socks netip.AddrPort,
	tag string, start startFunc, cleanups *[]func()) (rttInstance, error) {
	host, pid := l, 0
	if p.throughTUN() {
		h, cleanup, err := b.rttHost(l, mtu)
		if cleanup != nil {
			*cleanups = append(*cleanups, cleanup)
		}
		if err != nil {
			return rttInstance{}, err
		}
		sub := filepath.Join(dir, h.App) // the TUN program's configuration
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return rttInstance{}, err
		}
		ts, err := b.startTUN(ctx, h, p, mtu, socks, sub, tag, start)
		if err != nil {
			return rttInstance{}, err
		}
		*cleanups = append(*cleanups, ts.p.stop)
		host, pid = h, ts.pid
	}
	c, err := openRTT(ctx, host, p, socks)
	if err != nil {
		return rttInstance{}, err
	}
	*cleanups = append(*cleanups, func() { c.Close() })
	return rttInstance{c: c, pid: pid}, nil
}

// openRTT opens p's connection for the round trips from the app host of
// host and makes rttWarmup round trips on it.
func openRTT(ctx context.Context, host *lab.Lab, p path, socks netip.AddrPort) (net.Conn, error) {
	dial, err := dialerFor(p, socks)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = host.Do(host.App, func() error {
		var err error
		if c, err = dial(ctx); err != nil {
			return err
		}
		buf := make([]byte, 1)
		for range rttWarmup {
			if err := echoOnce(c, buf); err != nil {
				c.Close()
				return err
			}
		}
		return nil
	})
	return c, err
}

// rttHost makes a TUN program's own app host for the interleaved round
// trips, the i-th of the lab: a namespace linked to the lab's proxy host
// by a veth pair of its own (10.210.i.2 ── 10.210.i.1), with a
// route to the proxy host's SOCKS address, and returns a view of the lab
// with it as the app host (the view is never closed: cleanup removes the
// link and the namespace).
func (b *bench) rttHost(l *lab.Lab, mtu int) (*lab.Lab, func(), error) {
	i := b.rttHosts
	if i > 250 {
		return nil, nil, fmt.Errorf("round-trip host %d: too many", i)
	}
	b.rttHosts++
	ns := fmt.Sprintf("%s-rtt%d", l.App, i)
	proxyEnd := fmt.Sprintf("rtt%d", i)
	if err := netns.Create(ns); err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		// The namespace goes once nothing holds it, maybe later: the
		// proxy host's end of the link goes now.
		lab.WithNetlink(l.Proxy, func(h *netlink.Handle) error {
			if link, err := h.LinkByName(proxyEnd); err == nil {
				return h.LinkDel(link)
			}
			return nil
		})
		if err := netns.Delete(ns); err != nil {
			fmt.Fprintf(b.log, "benchtool: removing %s: %v\n", ns, err)
		}
	}
	app4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, byte(i), 2}), 24)
	proxy4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, byte(i), 1}), 24)
	app6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x10, 3: byte(i), 15: 2}), 64)
	proxy6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x10, 3: byte(i), 15: 1}), 64)
	err := lab.WithNetlink(ns, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err == nil {
		err = l.Link(ns, "up0", app4, app6, l.Proxy, proxyEnd, proxy4, proxy6, mtu)
	}
	if err == nil {
		err = routeAdd(ns, lab.ProxyDown4.Masked(), proxy4.Addr())
	}
	if err != nil {
		return nil, cleanup, fmt.Errorf("round-trip host %d: %w", i, err)
	}
	return &lab.Lab{App: ns, Proxy: l.Proxy, Remote: l.Remote}, cleanup, nil
}
