package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tunsocks/tunsocks/internal/lab"
)

// udpHeldRate is how many new UDP flows a second the held-flows row opens:
// below tunsocks' default per-source new-flow rate (250/s), so the row
// measures flows, not the rate limit.
const udpHeldRate = 200

// pprofAddr is where tunsocks serves its profiles in the app host when
// -heap-profiles is set.
const pprofAddr = "127.0.0.1:6061"

// measureCopyRTT fills p's round-trip rows through the copying SOCKS
// server.
func (b *bench) measureCopyRTT(ctx context.Context, l *lab.Lab, p path) error {
	name := b.cfg.copySocks.name
	r50 := b.tab.declare(rttRow(b.cfg, 50, name), latency, targetRTT)
	r99 := b.tab.declare(rttRow(b.cfg, 99, name), latency, 0)
	if err := b.probe(ctx, l, p, copySocksAddr); err != nil {
		b.record(r50, p, 0, err)
		b.record(r99, p, 0, err)
		return ctx.Err()
	}
	dial, err := dialerFor(p, copySocksAddr)
	if err != nil {
		return err
	}
	var cs0, cpu0 float64
	var serr error
	if p.throughTUN() {
		cs0, serr = ctxSwitches(b.tunPid)
		cpu0 = cpuSeconds(b.tunPid, &serr)
	}
	p50, p99, err := rtt(ctx, l, dial, b.cfg.rtts)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.record(r50, p, p50.Seconds(), err)
	b.record(r99, p, p99.Seconds(), err)
	if p.throughTUN() {
		cs1, err1 := ctxSwitches(b.tunPid)
		cpu1 := cpuSeconds(b.tunPid, &err1)
		if err == nil {
			err = errors.Join(serr, err1)
		}
		n := float64(b.cfg.rtts + rttWarmup)
		b.record(b.tab.declare(rttSwitchesRow(name), factor, 0), p, (cs1-cs0)/n, err)
		b.record(b.tab.declare(rttCPURow(name), latency, 0), p, (cpu1-cpu0)/n, err)
	}
	return nil
}

// cpuSeconds is cpuTime in seconds, its error joined into *err.
func cpuSeconds(pid int, err *error) float64 {
	d, e := cpuTime(pid)
	*err = errors.Join(*err, e)
	return d.Seconds()
}

// measureBulk runs iperf3 in both directions with 4 streams for cfg.bulk,
// waits cfg.settle, and records the TUN program's RSS then, and its ratio
// to the RSS at start: memory a burst leaves behind.
func (b *bench) measureBulk(ctx context.Context, l *lab.Lab, p path, mtu int, ts *tunRun, startRSS float64, startErr error) error {
	r := b.tab.declare(rssBulkRow(b.cfg, mtu), memory, 0)
	f := b.tab.declare(rssBulkFactorRow(), factor, 0)
	fmt.Fprintf(b.log, "%-10s  bulk transfer for %v, then %v idle\n", p, b.cfg.bulk, b.cfg.settle)
	_, err := runIn(ctx, b.cfg.bulk+30*time.Second, l.App, "iperf3", "-c", remoteAddr.String(), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(int(b.cfg.bulk/time.Second)), "-P", "4", "--bidir", "-J", "--connect-timeout", "5000")
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		b.record(r, p, 0, err)
		b.record(f, p, 0, err)
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(b.cfg.settle):
	}
	v, anon, file, err := rssSplit(ts.pid)
	b.record(r, p, v, err)
	b.record(b.tab.declare(rssPartRow(rssBulkRow(b.cfg, mtu), "anon"), memory, 0), p, anon, err)
	b.record(b.tab.declare(rssPartRow(rssBulkRow(b.cfg, mtu), "file"), memory, 0), p, file, err)
	if err == nil {
		err = startErr
	}
	b.record(f, p, v/startRSS, err)
	b.heapProfile(l, p, "after-bulk")
	return nil
}

// measureIdle opens idle TCP connections through p's TUN program (running
// fresh, through the copying SOCKS server) in steps of the idle counts, and
// records its RSS at each step and the memory per connection; at the last
// step it pokes every connection with one echo and counts those that
// answer.
func (b *bench) measureIdle(ctx context.Context, l *lab.Lab, p path, mtu int, ts *tunRun) error {
	dial, err := dialerFor(p, copySocksAddr)
	if err != nil {
		return err
	}
	// As for the start row: the start-up probe may come before the
	// program has finished starting (tunsocks then unmaps the code only
	// start-up ran, the probe's with it), and "before" would lack the
	// connection path that the first idle connection maps back. One more
	// echo 1 s later is one connection to a started program.
	time.Sleep(time.Second)
	berr := b.probe(ctx, l, p, copySocksAddr)
	time.Sleep(time.Second) // let that flow finish
	var before, beforeAnon float64
	if berr == nil {
		before, beforeAnon, _, berr = rssSplit(ts.pid)
	}
	b.heapProfile(l, p, "idle-0")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, n := range b.idleCounts() {
		rr := b.tab.declare(rssConnsRow(mtu, n), memory, 0)
		rp := b.tab.declare(perConnRow(n), perItem, 0)
		ra := b.tab.declare(perConnAnonRow(n), perItem, 0)
		fmt.Fprintf(b.log, "%-10s  opening idle connections up to %d\n", p, n)
		more, err := openIdle(ctx, l, dial, n-len(conns), idleOpenTimeLimit)
		conns = append(conns, more...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			err = fmt.Errorf("after %d open: %w", len(conns), err)
			b.record(rr, p, 0, err)
			b.record(rp, p, 0, err)
			b.record(ra, p, 0, err)
			if n == b.cfg.idleMax {
				b.record(b.tab.declare(rssScaledRow(n), memory, 0), p, 0, err)
				b.record(b.tab.declare(pokedRow(n), count, 0), p, 0, err)
			}
			return nil
		}
		time.Sleep(idleSettle)
		v, anon, _, err := rssSplit(ts.pid)
		b.record(rr, p, v, err)
		if err == nil {
			err = berr
		}
		b.record(rp, p, (v-before)/float64(n), err)
		b.record(ra, p, (anon-beforeAnon)/float64(n), err)
		b.heapProfile(l, p, fmt.Sprintf("idle-%d", n))
		if n == b.cfg.idleMax {
			b.record(b.tab.declare(rssScaledRow(n), memory, 0), p, before+(v-before)*10000/float64(n), err)
			ok, err := poke(ctx, l, conns)
			b.record(b.tab.declare(pokedRow(n), count, 0), p, float64(ok), err)
		}
	}
	return nil
}

// heapProfile saves a heap profile of tunsocks (not of a peer) into
// -heap-profiles DIR, as PATH-WHAT.heap, when that flag is set; tunsocks
// then runs with --pprof on pprofAddr in the app host.
func (b *bench) heapProfile(l *lab.Lab, p path, what string) {
	if b.cfg.heapDir == "" || p.isPeer() {
		return
	}
	for _, what := range []string{what + ".memstats", what + ".heap", what + ".goroutines"} {
		if err := b.fetchProfile(l, p, what); err != nil {
			fmt.Fprintf(b.log, "%-10s  profile %s: error: %v\n", p, what, err)
		}
	}
}

// fetchProfile saves /debug/pprof/heap (what ends in .heap), the
// goroutines' stacks (.goroutines, grouped) or /debug/memstats into
// -heap-profiles DIR.
func (b *bench) fetchProfile(l *lab.Lab, p path, what string) error {
	file := filepath.Join(b.cfg.heapDir, fmt.Sprintf("%s-%s", p, what))
	url := "/debug/pprof/heap?gc=1"
	switch {
	case strings.HasSuffix(what, ".memstats"):
		url = "/debug/memstats"
	case strings.HasSuffix(what, ".goroutines"):
		url = "/debug/pprof/goroutine?debug=1"
	}
	return l.Do(l.App, func() error {
		c, err := net.DialTimeout("tcp", pprofAddr, ioTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "GET "+url+" HTTP/1.0\r\nHost: tunsocks\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET heap profile: %s", resp.Status)
		}
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		return os.WriteFile(file, data, 0o644)
	})
}

// openIdle opens n connections with idleOpenWorkers goroutines, each
// connection proven end to end by one echo, and returns those it opened
// (the caller closes them) with the first error that stopped it. Bounded
// by limit overall.
func openIdle(ctx context.Context, l *lab.Lab, dial dialFunc, n int, limit time.Duration) ([]net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, n)
		next  atomic.Int64
		errs  = make([]error, idleOpenWorkers)
		wg    sync.WaitGroup
	)
	for w := range idleOpenWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = l.Do(l.App, func() error {
				buf := make([]byte, 1)
				for next.Add(1) <= int64(n) {
					if err := ctx.Err(); err != nil {
						return err
					}
					c, err := dial(ctx)
					if err != nil {
						return err
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
					if err := echoOnce(c, buf); err != nil {
						return err
					}
					c.SetDeadline(time.Time{})
				}
				return nil
			})
			if errs[w] != nil {
				cancel() // the others stop too
			}
		}()
	}
	wg.Wait()
	return conns, errors.Join(errs...)
}

// poke sends one byte on every connection and counts those that echo it.
func poke(ctx context.Context, l *lab.Lab, conns []net.Conn) (int, error) {
	var ok, next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, idleOpenWorkers)
	for w := range idleOpenWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = l.Do(l.App, func() error {
				buf := make([]byte, 1)
				for i := next.Add(1) - 1; i < int64(len(conns)); i = next.Add(1) - 1 {
					if err := ctx.Err(); err != nil {
						return err
					}
					if echoOnce(conns[i], buf) == nil {
						ok.Add(1)
					}
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return int(ok.Load()), errors.Join(errs...)
}

// measureUDP fills p's UDP rows: flows held open within the per-source
// rates of a flood guard and the memory each costs, then a flood of new
// flows (one datagram from each of cfg.udpFlood source ports) and what the
// TUN program's RSS is after it.
func (b *bench) measureUDP(ctx context.Context, l *lab.Lab, p path, ts *tunRun) error {
	if n := b.cfg.udpHeld; n > 0 {
		ra := b.tab.declare(udpHeldRow(b.cfg), count, 0)
		rf := b.tab.declare(perFlowRow(b.cfg), perItem, 0)
		rfa := b.tab.declare(perFlowAnonRow(b.cfg), perItem, 0)
		// One flow first, as the start row's connection: the bulk row
		// left the program idle for long enough to unmap its code
		// (tunsocks does after 20 s quiet), and the code the first flow
		// maps back is not the flows' memory.
		if err := warmUDP(ctx, l); err != nil {
			b.record(ra, p, 0, err)
			b.record(rf, p, 0, err)
			b.record(rfa, p, 0, err)
			return nil
		}
		time.Sleep(time.Second)
		before, beforeAnon, _, berr := rssSplit(ts.pid)
		var after, afterAnon float64
		answered, err := holdUDP(ctx, l, n, func() error {
			var err error
			time.Sleep(time.Second)
			after, afterAnon, _, err = rssSplit(ts.pid)
			b.heapProfile(l, p, fmt.Sprintf("udp-held-%d", n))
			return err
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.record(ra, p, float64(answered), err)
		if err == nil && answered == 0 {
			err = errors.New("no flow answered")
		}
		if err == nil {
			err = berr
		}
		b.record(rf, p, (after-before)/float64(max(answered, 1)), err)
		b.record(rfa, p, (afterAnon-beforeAnon)/float64(max(answered, 1)), err)
	}
	if n := b.cfg.udpFlood; n > 0 {
		fmt.Fprintf(b.log, "%-10s  offering %d new UDP flows at %d/s\n", p, n, b.cfg.udpRate)
		answered, err := floodUDP(ctx, l, n, b.cfg.udpRate)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.record(b.tab.declare(udpFloodAnsweredRow(b.cfg), count, 0), p, float64(answered), err)
		time.Sleep(2 * time.Second)
		v, err := rss(ts.pid)
		b.record(b.tab.declare(udpFloodRow(b.cfg), memory, 0), p, v, err)
	}
	return nil
}

// warmUDP sends one datagram to the remote echo service from
// udpWarmPort in the app host and waits up to 3 s for its echo.
func warmUDP(ctx context.Context, l *lab.Lab) error {
	return l.Do(l.App, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: lab.AppUplink4.Addr().AsSlice(), Port: udpWarmPort})
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDP([]byte{'u'}, &net.UDPAddr{IP: remoteAddr.AsSlice(), Port: udpEchoPort}); err != nil {
			return err
		}
		deadline := time.Now().Add(3 * time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		c.SetReadDeadline(deadline)
		if _, _, err := c.ReadFromUDP(make([]byte, 16)); err != nil {
			return fmt.Errorf("the warm-up UDP flow got no echo: %w", err)
		}
		return nil
	})
}

// holdUDP opens n UDP sockets in the app host, each on its own source port,
// sends one datagram from each to the remote echo service (udpHeldRate a
// second), counts the sockets that get their echo, calls measure while
// they are all still open, and closes them.
func holdUDP(ctx context.Context, l *lab.Lab, n int, measure func() error) (int, error) {
	var answered int
	var merr error
	err := l.Do(l.App, func() error {
		dst := &net.UDPAddr{IP: remoteAddr.AsSlice(), Port: udpEchoPort}
		socks := make([]*net.UDPConn, 0, n)
		defer func() {
			for _, c := range socks {
				c.Close()
			}
		}()
		tick := time.NewTicker(time.Second / udpHeldRate)
		defer tick.Stop()
		for i := range n {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: lab.AppUplink4.Addr().AsSlice(), Port: udpHeldPortBase + i})
			if err != nil {
				return err
			}
			socks = append(socks, c)
			if _, err := c.WriteToUDP([]byte{'u'}, dst); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		buf := make([]byte, 16)
		for _, c := range socks {
			c.SetReadDeadline(deadline)
			if _, _, err := c.ReadFromUDP(buf); err == nil {
				answered++
			}
		}
		merr = measure()
		return nil
	})
	return answered, errors.Join(err, merr)
}

// floodUDP sends one datagram to the remote echo service from each of n
// source ports in the app host, rate a second, each from a socket closed
// right after (so the descriptor limit does not bound the flows), and
// counts the ports whose echo comes back, seen on a raw socket (nothing
// listens on those ports any more when the echo arrives; the app host
// answers it with an ICMP port unreachable, as a host would).
func floodUDP(ctx context.Context, l *lab.Lab, n, rate int) (int, error) {
	var seen []bool
	var count atomic.Int64
	err := l.Do(l.App, func() error {
		raw, err := rawUDP()
		if err != nil {
			return err
		}
		defer raw.Close()
		seen = make([]bool, 65536-udpFloodPortBase)
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				m, err := raw.Read(buf)
				if err != nil {
					return
				}
				if port, ok := echoReplyPort(buf[:m]); ok && port >= udpFloodPortBase && !seen[port-udpFloodPortBase] {
					seen[port-udpFloodPortBase] = true
					count.Add(1)
				}
			}
		}()
		dst := &net.UDPAddr{IP: remoteAddr.AsSlice(), Port: udpEchoPort}
		const batches = 100 // a second's datagrams in batches of 10 ms
		perBatch := max(rate/batches, 1)
		tick := time.NewTicker(time.Second / batches)
		defer tick.Stop()
		// Ports the TUN program's own upstream sockets hold (they live in
		// the app host too) are skipped.
		offered, port := 0, udpFloodPortBase
		for ; offered < n && port < udpFloodPortBase+len(seen); port++ {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: lab.AppUplink4.Addr().AsSlice(), Port: port})
			if err != nil {
				continue
			}
			_, err = c.WriteToUDP([]byte{'f'}, dst)
			c.Close()
			if err != nil {
				return fmt.Errorf("source port %d: %w", port, err)
			}
			if offered++; offered%perBatch == 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-tick.C:
				}
			}
		}
		if offered < n {
			return fmt.Errorf("only %d source ports from %d to %d were free", offered, udpFloodPortBase, port-1)
		}
		time.Sleep(3 * time.Second) // the last echoes
		raw.SetReadDeadline(time.Unix(1, 0))
		<-done
		return nil
	})
	return int(count.Load()), err
}

// rawUDP opens a raw IPv4 socket that sees a copy of every UDP datagram
// the host receives, in the runtime poller (so reads take deadlines).
func rawUDP() (*os.File, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("raw UDP socket: %w", err)
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 16<<20)
	return os.NewFile(uintptr(fd), "raw-udp"), nil
}

// echoReplyPort returns the destination port of an IPv4 packet holding a
// UDP datagram from the remote echo service.
func echoReplyPort(pkt []byte) (int, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return 0, false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+8 || pkt[9] != syscall.IPPROTO_UDP {
		return 0, false
	}
	src, _ := netip.AddrFromSlice(pkt[12:16])
	if src != remoteAddr || binary.BigEndian.Uint16(pkt[ihl:]) != udpEchoPort {
		return 0, false
	}
	return int(binary.BigEndian.Uint16(pkt[ihl+2:])), true
}

// bringUp waits up to timeout for device dev to appear in namespace ns and
// sets it up if the program that made it left it down (tun2socks does).
func bringUp(ns, dev string, timeout time.Duration, p *proc) error {
	deadline := time.Now().Add(timeout)
	return lab.WithNetlink(ns, func(h *netlink.Handle) error {
		for {
			link, err := h.LinkByName(dev)
			if err == nil {
				if link.Attrs().Flags&net.FlagUp != 0 {
					return nil
				}
				if err := h.LinkSetUp(link); err != nil {
					return fmt.Errorf("set %s up in %s: %w", dev, ns, err)
				}
				return nil
			}
			switch {
			case p.exited():
				return fmt.Errorf("%s exited before making %s", p.name, dev)
			case time.Now().After(deadline):
				return fmt.Errorf("%s did not make %s in %s within %v", p.name, dev, ns, timeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// runStartHook runs -start-hook with p's name and the TUN program's pid,
// its output passed through, when that flag is set: a way to look at the
// process (smaps, pagemap, a heap profile) in the state the start row
// read. A failing hook is reported and the run goes on.
func (b *bench) runStartHook(p path, pid int) {
	if b.cfg.startHook == "" {
		return
	}
	cmd := exec.Command(b.cfg.startHook, p.String(), strconv.Itoa(pid))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "benchtool: -start-hook %s: %v\n", b.cfg.startHook, err)
	}
}
