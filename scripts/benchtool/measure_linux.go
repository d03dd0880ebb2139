package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/socksclient"
)

// Ports on the remote host. Each path has its own echo port so that the
// TIME_WAIT sockets one path leaves behind never collide with the next
// path's connections.
const (
	iperfPort     = 5201
	echoPortBase  = 7000 // + path
	socksPort     = 1080
	copySocksPort = 1081            // the copying SOCKS server (-copy-socks)
	ioTimeout     = 5 * time.Second // any single connect, read or write
	maxErrsWorker = 10              // a connection-rate worker gives up after this many failures
	rttWarmup     = 20              // round trips before the measured ones
)

var (
	remoteAddr    = lab.Remote4.Addr()
	socksAddr     = netip.AddrPortFrom(lab.ProxyDown4.Addr(), socksPort)
	copySocksAddr = netip.AddrPortFrom(lab.ProxyDown4.Addr(), copySocksPort)
)

func echoAddr(p path) string {
	return netip.AddrPortFrom(remoteAddr, uint16(echoPortBase+int(p))).String()
}

// dialFunc opens a connection to the remote echo service of a path. It is
// always called on a thread inside the app namespace (see inApp), so the
// sockets it makes belong to the app host.
type dialFunc func(ctx context.Context) (net.Conn, error)

// dialerFor is p's dialer; socks is the SOCKS server the socks-only path
// speaks to.
func dialerFor(p path, socks netip.AddrPort) (dialFunc, error) {
	nd := &net.Dialer{Timeout: ioTimeout}
	addr := echoAddr(p)
	switch {
	case p == kernelPath || p.throughTUN():
		// Same socket call; only the app host's routes differ.
		return func(ctx context.Context) (net.Conn, error) { return nd.DialContext(ctx, "tcp", addr) }, nil
	case p == socksPath:
		c, err := socksclient.Parse("socks5://"+socks.String(), nd)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) (net.Conn, error) { return c.DialContext(ctx, "tcp", addr) }, nil
	}
	return nil, fmt.Errorf("no dialer for %v", p)
}

// echoOnce sends one byte on c and reads it back.
func echoOnce(c net.Conn, buf []byte) error {
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	buf[0] = 'x'
	if _, err := c.Write(buf[:1]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return err
	}
	return nil
}

// connRate runs workers that each repeat connect, 1-byte echo, close until
// d has passed (at most maxPerWorker times), and returns completed
// connections per second.
func connRate(ctx context.Context, l *lab.Lab, dial dialFunc, workers int, d time.Duration) (float64, error) {
	const maxPerWorker = 1_000_000
	var done, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.Do(l.App, func() error {
				buf := make([]byte, 1)
				errs := 0
				for n := 0; n < maxPerWorker && time.Now().Before(deadline); n++ {
					if err := ctx.Err(); err != nil {
						return err
					}
					err := func() error {
						c, err := dial(ctx)
						if err != nil {
							return err
						}
						defer c.Close()
						return echoOnce(c, buf)
					}()
					if err == nil {
						done.Add(1)
						continue
					}
					failed.Add(1)
					if errs++; errs >= maxErrsWorker {
						return fmt.Errorf("worker gave up after %d failures, last: %w", errs, err)
					}
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("%d ok, %d failed: %w", done.Load(), failed.Load(), firstErr)
	}
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d of %d connections failed", n, n+done.Load())
	}
	return float64(done.Load()) / elapsed.Seconds(), nil
}

// rtt measures n 1-byte request/response round trips on one connection and
// returns the 50th and 99th percentiles.
func rtt(ctx context.Context, l *lab.Lab, dial dialFunc, n int) (p50, p99 time.Duration, err error) {
	samples := make([]time.Duration, 0, n)
	err = l.Do(l.App, func() error {
		c, err := dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		buf := make([]byte, 1)
		for range rttWarmup {
			if err := echoOnce(c, buf); err != nil {
				return err
			}
		}
		for range n {
			t0 := time.Now()
			if err := echoOnce(c, buf); err != nil {
				return err
			}
			samples = append(samples, time.Since(t0))
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if p50, err = percentile(samples, 0.50); err != nil {
		return 0, 0, err
	}
	p99, err = percentile(samples, 0.99)
	return p50, p99, err
}

// echoServer answers every byte it gets with the same byte, on one TCP
// port per path, and every UDP datagram on udpEchoPort, on the remote host.
type echoServer struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	lns []net.Listener
	pc  net.PacketConn
	cs  map[net.Conn]struct{}
}

// startEcho listens inside the remote namespace.
func startEcho(l *lab.Lab) (*echoServer, error) {
	e := &echoServer{cs: make(map[net.Conn]struct{})}
	err := l.Do(l.Remote, func() error {
		for p := range numPaths {
			ln, err := net.Listen("tcp", echoAddr(p))
			if err != nil {
				return err
			}
			e.lns = append(e.lns, ln)
		}
		var err error
		e.pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(remoteAddr, udpEchoPort).String())
		return err
	})
	if err != nil {
		e.close()
		return nil, fmt.Errorf("echo server: %w", err)
	}
	for _, ln := range e.lns {
		e.wg.Add(1)
		go e.serve(ln)
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		lab.EchoUDP(e.pc)
	}()
	return e, nil
}

func (e *echoServer) serve(ln net.Listener) {
	defer e.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		if e.cs == nil { // closing
			e.mu.Unlock()
			c.Close()
			return
		}
		e.cs[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			c.Close()
			e.mu.Lock()
			delete(e.cs, c)
			e.mu.Unlock()
		}()
	}
}

// close stops listening, closes every connection and waits for the
// goroutines.
func (e *echoServer) close() {
	for _, ln := range e.lns {
		ln.Close()
	}
	if e.pc != nil {
		e.pc.Close()
	}
	e.mu.Lock()
	for c := range e.cs {
		c.Close()
	}
	e.cs = nil
	e.mu.Unlock()
	e.wg.Wait()
}

// iperf runs one iperf3 client in the app host for path p and returns the
// receiver's throughput in bits per second.
func (b *bench) iperf(ctx context.Context, l *lab.Lab, p path, streams int, reverse bool) (float64, error) {
	args := []string{"-c", remoteAddr.String(), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(int(b.cfg.iperfTime / time.Second)), "-P", strconv.Itoa(streams),
		"-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	name := "iperf3"
	if p == socksPath {
		args = append([]string{"-q", "-f", b.proxychainsConf, "iperf3"}, args...)
		name = "proxychains4"
	}
	out, err := runIn(ctx, b.cfg.iperfTime+20*time.Second, l.App, name, args...)
	if err != nil {
		// iperf3 -J reports its own errors in the JSON, with exit status 1.
		if bps, perr := parseIperf(out); perr != nil && len(out) > 0 {
			return 0, errors.Join(err, perr)
		} else if perr == nil {
			return bps, nil
		}
		return 0, err
	}
	return parseIperf(out)
}
