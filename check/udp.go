package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
	"github.com/tunsocks/tunsocks/stun"
)

// association is a UDP ASSOCIATE made by hand, so that the probes see
// BND.ADDR as sent, the headers of the answers, and can close the control
// connection alone.
type association struct {
	ctrl  net.Conn
	pc    net.Conn // connected to the relay
	bound socks.Addr
	relay string
}

func (a *association) Close() {
	a.ctrl.Close()
	if a.pc != nil {
		a.pc.Close()
	}
}

func (c *checker) associate(ctx context.Context) (*association, error) {
	sc, err := socksclient.New(c.proxyURL(nil), c.o.Dialer)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	raw, err := c.o.Dialer.DialContext(dctx, "tcp", c.server)
	if err != nil {
		return nil, err
	}
	ctrl, bound, err := sc.Handshake(dctx, raw, socks.CmdUDPAssociate, socks.Addr{IP: netip.IPv4Unspecified()})
	if err != nil {
		raw.Close()
		return nil, err
	}
	a := &association{ctrl: ctrl, bound: bound}
	if bound.Port == 0 {
		ctrl.Close()
		return a, fmt.Errorf("the relay address %s has port 0", bound)
	}
	a.relay = bound.String()
	if bound.Name == "" && (!bound.IP.IsValid() || bound.IP.IsUnspecified()) {
		host, _, _ := net.SplitHostPort(c.server)
		a.relay = net.JoinHostPort(host, fmt.Sprint(bound.Port))
	}
	if a.pc, err = c.o.Dialer.DialContext(dctx, "udp", a.relay); err != nil {
		ctrl.Close()
		return a, fmt.Errorf("UDP socket to the relay %s: %w", a.relay, err)
	}
	return a, nil
}

// dnsName is the name the UDP probe asks for.
func (c *checker) dnsName() string {
	if c.o.DNSName != "" {
		return c.o.DNSName
	}
	if _, err := netip.ParseAddr(c.tHost); err != nil {
		return c.tHost
	}
	return "example.com"
}

// dnsExchange sends a DNS query for name through the association to the
// UDP target, a few times within wait, and returns the header's sender of
// the first answer with the query's ID.
func (c *checker) dnsExchange(a *association, wait time.Duration) (socks.Addr, error) {
	dst, err := socks.ParseAddr(c.o.UDPTarget)
	if err != nil {
		return socks.Addr{}, err
	}
	id := uint16(time.Now().UnixNano())
	name, err := dnsmessage.NewName(strings.TrimSuffix(c.dnsName(), ".") + ".")
	if err != nil {
		return socks.Addr{}, err
	}
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	payload, err := q.Pack()
	if err != nil {
		return socks.Addr{}, err
	}
	d, err := socks.AppendUDPHeader(nil, 0, dst)
	if err != nil {
		return socks.Addr{}, err
	}
	d = append(d, payload...)
	deadline := time.Now().Add(wait)
	buf := make([]byte, 65535)
	for try := 0; try < 3 && time.Now().Before(deadline); try++ {
		if _, err := a.pc.Write(d); err != nil {
			return socks.Addr{}, err
		}
		until := time.Now().Add(wait / 3)
		if until.After(deadline) || try == 2 {
			until = deadline
		}
		a.pc.SetReadDeadline(until)
		for {
			n, err := a.pc.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) || !isTimeout(err) {
					return socks.Addr{}, err
				}
				break
			}
			frag, from, p, err := socks.ParseUDP(buf[:n])
			if err != nil || frag != 0 {
				continue
			}
			var m dnsmessage.Parser
			h, err := m.Start(p)
			if err != nil || h.ID != id || !h.Response {
				continue
			}
			return from, nil
		}
	}
	return socks.Addr{}, errNoAnswer
}

var errNoAnswer = errors.New("no answer")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// udp probes UDP ASSOCIATE: the reply, DNS through the relay, and the
// association's end with its control connection.
func (c *checker) udp(ctx context.Context) {
	if c.scheme != "socks5" {
		why := "SOCKS4 has no UDP"
		if c.scheme == "http" {
			why = "HTTP CONNECT carries only TCP"
		}
		c.r.Facts.UDP = &UDPFacts{Supported: false, Reason: why}
		c.probe("udp.associate", func() (Verdict, string) {
			return Warn, why + ": UDP apps (DNS over UDP, QUIC, games, calls) cannot use this upstream"
		})
		return
	}
	f := &UDPFacts{}
	c.r.Facts.UDP = f
	var a *association
	v := c.probe("udp.associate", func() (Verdict, string) {
		var err error
		a, err = c.associate(ctx)
		if err != nil {
			f.Reason = err.Error()
			var re *socks.ReplyError
			if errors.As(err, &re) && re.Code == socks.CommandNotSupported {
				f.Reason = "the proxy does not support UDP ASSOCIATE (reply 0x07 command not supported)"
				return Fail, f.Reason + ": UDP apps (DNS over UDP, QUIC, games, calls) cannot use this upstream"
			}
			return Fail, "UDP ASSOCIATE failed: " + f.Reason
		}
		f.Supported, f.BoundAddr, f.Relay = true, a.bound.String(), a.relay
		if a.bound.Name == "" && a.bound.IP.IsUnspecified() {
			f.BoundZero = true
			return Warn, fmt.Sprintf("relay BND.ADDR is %s: replaced by the proxy's address, %s (tunsocks does this; clients that take it literally fail)", a.bound, a.relay)
		}
		return Pass, fmt.Sprintf("relay at %s", a.relay)
	})
	if v == Fail {
		c.skip("udp.dns", "no UDP association")
		return
	}
	defer a.Close()
	if c.o.UDPTarget == "" {
		c.skip("udp.dns", "no DNS server to ask: give --udp-target HOST:53")
		c.skip("udp.control", "needs udp.dns")
		return
	}
	v = c.probe("udp.dns", func() (Verdict, string) {
		from, err := c.dnsExchange(a, c.o.Timeout)
		if err != nil {
			f.DNS = ptr(false)
			return Fail, fmt.Sprintf("a DNS query to %s through the relay %s got no answer in %v (%v): UDP does not get through", c.o.UDPTarget, a.relay, c.o.Timeout, err)
		}
		f.DNS = ptr(true)
		f.ReplySource = from.String()
		want, _ := socks.ParseAddr(c.o.UDPTarget)
		ok := from == want
		f.ReplySourceOK = ptr(ok)
		if !ok {
			return Warn, fmt.Sprintf("answered, but the relay names the sender %s instead of %s: apps that check the source drop it", from, want)
		}
		return Pass, fmt.Sprintf("DNS query for %s answered by %s through the relay", c.dnsName(), from)
	})
	if v == Fail {
		c.skip("udp.control", "needs udp.dns")
		return
	}
	c.probe("udp.control", func() (Verdict, string) {
		a.ctrl.Close()
		// Give the server a moment to notice the FIN.
		time.Sleep(200 * time.Millisecond)
		wait := min(c.o.Timeout, 2*time.Second)
		_, err := c.dnsExchange(a, wait)
		if err == nil {
			f.EndsWithControl = ptr(false)
			return Warn, "the relay still forwards after the control connection closed: the server leaks associations"
		}
		f.EndsWithControl = ptr(true)
		return Pass, "the association ended with its control connection"
	})
}

// nat runs the RFC 5780 mapping and filtering tests through the relay,
// each on a fresh association.
func (c *checker) nat(ctx context.Context) {
	if c.o.STUN == "" {
		return
	}
	if c.scheme != "socks5" || c.r.Facts.UDP == nil || !c.r.Facts.UDP.Supported {
		c.skip("nat.mapping", "no UDP association")
		c.skip("nat.filtering", "no UDP association")
		return
	}
	server, err := c.stunAddr(ctx)
	if err != nil {
		c.probe("nat.mapping", func() (Verdict, string) { return Fail, err.Error() })
		return
	}
	sc, err := socksclient.New(c.proxyURL(nil), c.o.Dialer)
	if err != nil {
		return
	}
	nf := &NATFacts{Mapping: stun.Unknown.String(), Filtering: stun.Unknown.String(), SourceOK: true}
	c.r.Facts.NAT = nf
	o := stun.Options{Wait: c.o.NATWait}
	var mb, fb stun.Behaviour
	c.probe("nat.mapping", func() (Verdict, string) {
		u, err := sc.ListenPacket(ctx)
		if err != nil {
			return Fail, fmt.Sprintf("UDP ASSOCIATE: %v", err)
		}
		defer u.Close()
		m, err := stun.DiscoverMapping(ctx, u, server, o)
		if err != nil {
			return Fail, fmt.Sprintf("STUN %s through the relay: %v", server, err)
		}
		mb = m.Behaviour
		nf.Mapping = m.Behaviour.String()
		for _, ap := range m.Mapped {
			if ap.IsValid() {
				nf.Mapped = append(nf.Mapped, ap.String())
			}
		}
		if m.SourceMismatch != "" {
			nf.SourceOK = false
			return Warn, fmt.Sprintf("%s mapping, but the relay misnames senders: %s", m.Behaviour, m.SourceMismatch)
		}
		if m.Behaviour != stun.EndpointIndependent {
			return Warn, fmt.Sprintf("%s mapping (mapped %v): a new public port per destination, which breaks P2P", m.Behaviour, nf.Mapped)
		}
		return Pass, fmt.Sprintf("endpoint-independent mapping (one public address %s for every destination)", m.Mapped[0])
	})
	c.probe("nat.filtering", func() (Verdict, string) {
		u, err := sc.ListenPacket(ctx)
		if err != nil {
			return Fail, fmt.Sprintf("UDP ASSOCIATE: %v", err)
		}
		defer u.Close()
		f, err := stun.DiscoverFiltering(ctx, u, server, o)
		if err != nil {
			return Fail, fmt.Sprintf("STUN %s through the relay: %v", server, err)
		}
		fb = f.Behaviour
		nf.Filtering = f.Behaviour.String()
		if f.SourceMismatch != "" {
			nf.SourceOK = false
			return Warn, fmt.Sprintf("%s filtering, but the relay misnames senders: %s", f.Behaviour, f.SourceMismatch)
		}
		if f.Behaviour != stun.EndpointIndependent {
			return Warn, fmt.Sprintf("%s filtering: answers only from where the app has sent to", f.Behaviour)
		}
		return Pass, "endpoint-independent filtering: anyone may answer the mapping"
	})
	if mb != stun.Unknown && fb != stun.Unknown {
		nf.Summary = stun.Summary(mb, fb)
	}
}

// stunAddr resolves the STUN server here (the NAT tests need IPs to
// compare with RESPONSE-ORIGIN and OTHER-ADDRESS).
func (c *checker) stunAddr(ctx context.Context) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(c.o.STUN); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, _ := net.SplitHostPort(c.o.STUN)
	lctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	addrs, err := c.o.LookupNetIP(lctx, "ip4", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("cannot resolve the STUN server %s: %v", host, err)
	}
	return netip.ParseAddrPort(net.JoinHostPort(addrs[0].Unmap().String(), port))
}
