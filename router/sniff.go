package router

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/sniff"
	"github.com/tunsocks/tunsocks/socks"
)

// SniffConfig makes the router read the name of a flow to a real address
// from the flow's first bytes (TLS server_name, HTTP Host, the ClientHello
// of a QUIC Initial) when the flow has no name otherwise.
//
// A TCP flow that is sniffed gives up dial-before-accept: its handshake
// completes first, up to MaxBytes are read for at most Timeout, then the
// rules decide with the name (and the address: Metadata.RealDst), the
// outbound is dialed and the bytes read are sent first. A refused or
// rejected flow is then reset after its handshake instead of refused in it,
// which is why Want should say yes only when the name could matter.
type SniffConfig struct {
	// Want reports whether a flow should wait for its name. It is asked
	// for TCP and UDP flows to an address no name is known for (not a
	// fake IP, not an address DNS answered for a name); m.Host is empty.
	// It must be safe for concurrent use. Required.
	Want func(m *rules.Metadata) bool
	// Timeout bounds the wait for a TCP flow's first bytes and for a QUIC
	// flow's further Initial packets; 0 means 300 ms. A server-speaks-first
	// flow (SSH, SMTP) waits this long and is then dialed by its address.
	Timeout time.Duration
	// MaxBytes bounds the bytes of a TCP flow read while sniffing; 0
	// means 16 KiB.
	MaxBytes int
	// OverrideDestination dials a proxied flow by its sniffed name
	// ("example.com:443": SOCKS ATYP domain, CONNECT host) instead of the
	// address. Outbounds that resolve names on this host (DIRECT, see
	// LocalResolver) are always given the address the app chose.
	OverrideDestination bool
}

// LocalResolver is implemented by outbounds that would resolve a name on
// this host (DIRECT). A sniffed flow's name is not dialed through them: the
// app already chose the address, and a second resolution could pick another
// one or leak the name to a resolver.
type LocalResolver interface {
	ResolvesLocally() bool
}

const (
	defaultSniffTimeout  = 300 * time.Millisecond
	defaultSniffMaxBytes = 16 << 10
	// maxSniffDatagrams bounds the datagrams of a UDP flow held while its
	// QUIC Initials are read.
	maxSniffDatagrams = 8
)

// wantSniff reports whether the flow m, already through metadata, waits
// for its name.
func (r *Router) wantSniff(m *rules.Metadata) bool {
	return r.cfg.Sniff != nil && m.Host == "" && m.Dst.Addr().IsValid() && r.cfg.Sniff.Want(m)
}

// sniffTarget is the address a sniffed flow's outbound dials.
func (r *Router) sniffTarget(out Outbound, host string, dst netip.AddrPort) string {
	if host == "" || !r.cfg.Sniff.OverrideDestination {
		return dst.String()
	}
	if l, ok := out.(LocalResolver); ok && l.ResolvesLocally() {
		return dst.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(dst.Port())))
}

// handleSniffedTCP serves a TCP flow that waits for its name: accept, read
// the first bytes, decide, dial, send them, relay.
func (r *Router) handleSniffedTCP(ctx context.Context, req tcpRequest, m *rules.Metadata) {
	rec := FlowRecord{Network: "tcp", Src: m.Src, Dst: m.Dst, InType: m.InType, InName: m.InName, InUser: m.InUser, Start: time.Now()}
	app, err := req.Accept()
	if err != nil {
		r.stats.Failed.Add(1)
		rec.Outbound, rec.Err = "-", err
		r.finish(rec)
		return
	}
	first, res, rerr := r.readFirst(ctx, app)
	if res.Verdict == sniff.Found {
		m.Host, m.RealDst = res.Host, true
		rec.Host, rec.SniffHost = res.Host, res.Host
		r.stats.Sniffed.Add(1)
	}
	d := r.decide(ctx, m)
	rec.Outbound, rec.Rule = d.name(), d.Rule
	r.countFlow("tcp", flowIn{typ: m.InType, name: m.InName, user: m.InUser}, rec.Outbound, d)
	d.Hits.Hit()
	r.log.Debug("sniffed", "net", "tcp", "src", m.Src, "dst", m.Dst, "proto", res.Protocol, "verdict", res.Verdict,
		"host", res.Host, "bytes", len(first), "wait", time.Since(rec.Start).Round(time.Microsecond))
	if rerr != nil {
		resetConn(app)
		r.stats.Failed.Add(1)
		rec.Err = rerr
		r.finish(rec)
		return
	}
	if d.Action != Proxy || d.Outbound == nil {
		// Too late to refuse the handshake: reset the connection.
		resetConn(app)
		r.stats.Rejected.Add(1)
		r.finish(rec)
		return
	}
	target := r.sniffTarget(d.Outbound, res.Host, m.Dst)
	dctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	dialStart := time.Now()
	up, err := d.Outbound.DialContext(dctx, "tcp", target)
	cancel()
	r.dialed(rec.Outbound, time.Since(dialStart), err)
	if err == nil && len(first) > 0 {
		if _, err = up.Write(first); err != nil {
			up.Close()
		}
	}
	if err != nil {
		resetConn(app)
		r.stats.Failed.Add(1)
		rec.Err = err
		r.finish(rec)
		return
	}
	e := r.newEntry("tcp", flowIn{typ: m.InType, name: m.InName, user: m.InUser}, m.Src)
	e.info.Start = rec.Start
	ta, _ := socks.ParseAddr(target)
	e.decided(m, d, m.Dst, ta)
	e.info.FakeIP = false // the name was read from the flow, not a fake IP
	if a := up.RemoteAddr(); a != nil {
		e.info.Remote = a.String()
	}
	e.closeFn = func() {
		resetConn(app)
		up.Close()
	}
	e.upC.Add(int64(len(first)))
	r.table.add(e)
	r.stats.TCPOpen.Add(1)
	fctx, lf := r.track(ctx, e, nil)
	_, _, rec.Err = relay.Stream(fctx, app, up, relay.StreamOptions{
		Idle: r.cfg.TCPIdle, Up: e.upC, Down: e.downC, Activity: lf.clock,
	})
	r.untrack(e, lf, &rec)
	r.stats.TCPOpen.Add(-1)
	r.finishEntry(e, &rec)
}

// readFirst reads the app's first bytes until they tell a name (or that
// they carry none), MaxBytes are read, Timeout passes or the app closes
// its side. The error is for a connection that failed: a timeout or the
// app's FIN is not one (the flow goes on by its address).
func (r *Router) readFirst(ctx context.Context, app net.Conn) ([]byte, sniff.Result, error) {
	sc := r.cfg.Sniff
	res := sniff.Result{Verdict: sniff.NeedMore}
	if err := app.SetReadDeadline(time.Now().Add(sc.Timeout)); err != nil {
		return nil, res, err
	}
	stop := context.AfterFunc(ctx, func() { _ = app.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 0, min(4096, sc.MaxBytes))
	for len(buf) < sc.MaxBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(cap(buf), sc.MaxBytes-len(buf)))...)[:len(buf)]
		}
		n, err := app.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			if res = sniff.Stream(buf); res.Verdict != sniff.NeedMore {
				break
			}
		}
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil, errors.Is(err, io.EOF):
				err = nil
			case ctx.Err() != nil:
				err = ctx.Err()
			}
			if err != nil {
				return buf, res, err
			}
			break
		}
	}
	if err := app.SetReadDeadline(time.Time{}); err != nil {
		return buf, res, err
	}
	return buf, res, nil
}

// resetConn ends an accepted connection the rules or the upstream refused:
// with a RST where the connection can send one, else a close.
func resetConn(c net.Conn) {
	switch a := c.(type) {
	case interface{ Abort() }:
		a.Abort()
		return
	case interface{ SetLinger(int) error }:
		_ = a.SetLinger(0)
	}
	c.Close()
}

// sniffUDP reads the name from a UDP flow's QUIC Initials: first is the
// flow's first datagram, to dst. While the Initials so far need more, it
// reads further datagrams for at most Timeout (and maxSniffDatagrams) and
// returns them, in order, for the caller to route.
func (r *Router) sniffUDP(f udpFlow, first []byte, dst netip.AddrPort) (sniff.Result, []pendingDatagram) {
	var q sniff.QUICSniffer
	host, v := q.Add(first)
	if v != sniff.NeedMore {
		return quicResult(host, v), nil
	}
	var more []pendingDatagram
	if err := f.SetReadDeadline(time.Now().Add(r.cfg.Sniff.Timeout)); err != nil {
		return quicResult(host, v), nil
	}
	buf := make([]byte, 65535)
	for v == sniff.NeedMore && len(more) < maxSniffDatagrams {
		n, to, err := f.ReadFrom(buf)
		if err != nil {
			break
		}
		p := append([]byte(nil), buf[:n]...)
		more = append(more, pendingDatagram{p: p, dst: to})
		if to == dst {
			host, v = q.Add(p)
		}
	}
	_ = f.SetReadDeadline(time.Time{})
	return quicResult(host, v), more
}

func quicResult(host string, v sniff.Verdict) sniff.Result {
	r := sniff.Result{Verdict: v, Host: host}
	if v == sniff.Found || v == sniff.NoName {
		r.Protocol = sniff.QUIC
	}
	return r
}

// pendingDatagram is one datagram read while sniffing, routed afterwards.
type pendingDatagram struct {
	p   []byte
	dst netip.AddrPort
}
