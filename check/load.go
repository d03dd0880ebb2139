package check

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"sync"
	"time"
)

// firstBytePrompt is what load and idle send through a CONNECT to get the
// target's first byte: an HTTP server answers it, an echo server echoes it.
func (c *checker) firstBytePrompt() []byte {
	return []byte("HEAD / HTTP/1.0\r\nHost: " + c.tHost + "\r\n\r\n")
}

// firstByte sends the prompt on conn and waits for one byte.
func (c *checker) firstByte(conn net.Conn) (time.Duration, error) {
	start := time.Now()
	conn.SetDeadline(start.Add(c.o.Timeout))
	if _, err := conn.Write(c.firstBytePrompt()); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// percentile returns the nearest-rank p-th percentile of sorted v.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

// load measures Rounds CONNECTs to a target form that worked.
func (c *checker) load(ctx context.Context) {
	if c.o.Rounds <= 0 {
		return
	}
	if c.okTarget == "" {
		c.skip("load", "no CONNECT worked")
		return
	}
	c.probe("load", func() (Verdict, string) {
		l := &Latency{Rounds: c.o.Rounds}
		c.r.Facts.Latency = l
		var conn, first []float64
		var lastErr error
		for i := 0; i < c.o.Rounds && ctx.Err() == nil; i++ {
			cn, _, d, err := c.dial(ctx, c.okTarget, nil)
			if err != nil {
				l.Failures++
				lastErr = err
				continue
			}
			conn = append(conn, ms(d))
			if fb, err := c.firstByte(cn); err == nil {
				first = append(first, ms(fb))
			}
			cn.Close()
		}
		sort.Float64s(conn)
		sort.Float64s(first)
		l.ConnectP50MS, l.ConnectP95MS = percentile(conn, 50), percentile(conn, 95)
		l.FirstByteP50MS, l.FirstByteP95MS = percentile(first, 50), percentile(first, 95)
		s := fmt.Sprintf("%d CONNECTs to %s: connect p50 %.1f ms, p95 %.1f ms", c.o.Rounds, c.okTarget, l.ConnectP50MS, l.ConnectP95MS)
		if len(first) > 0 {
			s += fmt.Sprintf("; first byte p50 %.1f ms, p95 %.1f ms", l.FirstByteP50MS, l.FirstByteP95MS)
		}
		switch {
		case l.Failures == c.o.Rounds:
			return Fail, fmt.Sprintf("all %d CONNECTs failed, the last: %v", l.Failures, lastErr)
		case l.Failures > 0:
			return Warn, fmt.Sprintf("%s; %d of %d failed (the last: %v)", s, l.Failures, c.o.Rounds, lastErr)
		}
		return Pass, s
	})
}

// idle holds a CONNECT and a UDP association idle for Idle, at the same
// time, and sees whether they still work.
func (c *checker) idle(ctx context.Context) {
	if c.o.Idle <= 0 {
		return
	}
	f := &IdleFacts{HeldMS: ms(c.o.Idle)}
	c.r.Facts.Idle = f
	type result struct {
		v Verdict
		s string
	}
	var tcpRes, udpRes *result
	var wg sync.WaitGroup
	sleep := func() bool {
		t := time.NewTimer(c.o.Idle)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if c.okTarget != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, _, _, err := c.dial(ctx, c.okTarget, nil)
			if err != nil {
				tcpRes = &result{Fail, fmt.Sprintf("CONNECT %s: %v", c.okTarget, err)}
				return
			}
			defer conn.Close()
			if !sleep() {
				tcpRes = &result{Skip, "interrupted"}
				return
			}
			if _, err := c.firstByte(conn); err != nil {
				f.TCPAlive = ptr(false)
				tcpRes = &result{Warn, fmt.Sprintf("a CONNECT idle for %v was closed (%v): the upstream's limit is lower; keep tcp-idle below it (a shorter --idle finds it)", c.o.Idle, err)}
				return
			}
			f.TCPAlive = ptr(true)
			tcpRes = &result{Pass, fmt.Sprintf("a CONNECT idle for %v still works", c.o.Idle)}
		}()
	}
	udpOK := c.scheme == "socks5" && c.o.UDPTarget != "" && c.r.Facts.UDP != nil && c.r.Facts.UDP.DNS != nil && *c.r.Facts.UDP.DNS
	if udpOK {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := c.associate(ctx)
			if err != nil {
				udpRes = &result{Fail, fmt.Sprintf("UDP ASSOCIATE: %v", err)}
				return
			}
			defer a.Close()
			if _, err := c.dnsExchange(a, c.o.Timeout); err != nil {
				udpRes = &result{Fail, fmt.Sprintf("DNS through the relay: %v", err)}
				return
			}
			if !sleep() {
				udpRes = &result{Skip, "interrupted"}
				return
			}
			if _, err := c.dnsExchange(a, min(c.o.Timeout, 3*time.Second)); err != nil {
				f.UDPAlive = ptr(false)
				udpRes = &result{Warn, fmt.Sprintf("a UDP association idle for %v stopped relaying: the upstream's limit is lower; keep udp-idle below it (a shorter --idle finds it)", c.o.Idle)}
				return
			}
			f.UDPAlive = ptr(true)
			udpRes = &result{Pass, fmt.Sprintf("a UDP association idle for %v still relays", c.o.Idle)}
		}()
	}
	start := time.Now()
	wg.Wait()
	held := time.Since(start)
	record := func(id string, r *result, why string) {
		if r == nil {
			c.skip(id, why)
			return
		}
		c.r.Probes = append(c.r.Probes, Probe{ID: id, Verdict: r.v, MS: ms(held), Summary: r.s})
	}
	record("idle.tcp", tcpRes, "no CONNECT worked")
	record("idle.udp", udpRes, "needs a working udp.dns")
}
