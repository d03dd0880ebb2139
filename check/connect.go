package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
)

// dial asks the proxy for a stream to target with the URL's credentials
// (or user, when not nil) and returns it with the reply's BND.ADDR (SOCKS
// only) and how long the exchange took.
func (c *checker) dial(ctx context.Context, target string, user *url.Userinfo) (net.Conn, socks.Addr, time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	start := time.Now()
	if c.scheme == "http" {
		hc, err := httpconnect.New(c.proxyURL(user), c.o.Dialer)
		if err != nil {
			return nil, socks.Addr{}, 0, err
		}
		conn, err := hc.DialContext(dctx, "tcp", target)
		return conn, socks.Addr{}, time.Since(start), err
	}
	sc, err := socksclient.New(c.proxyURL(user), c.o.Dialer)
	if err != nil {
		return nil, socks.Addr{}, 0, err
	}
	dst, err := socks.ParseAddr(target)
	if err != nil {
		return nil, socks.Addr{}, 0, err
	}
	raw, err := c.o.Dialer.DialContext(dctx, "tcp", c.server)
	if err != nil {
		return nil, socks.Addr{}, time.Since(start), err
	}
	conn, bound, err := sc.Handshake(dctx, raw, socks.CmdConnect, dst)
	if err != nil {
		raw.Close()
		return nil, socks.Addr{}, time.Since(start), err
	}
	return conn, bound, time.Since(start), nil
}

// classify names the kind of a CONNECT failure and says it as the proxy
// did.
func classify(err error) (kind, text string) {
	if err == nil {
		return "success", "succeeded"
	}
	var re *socks.ReplyError
	var se *httpconnect.StatusError
	switch {
	case errors.As(err, &re) && re.Version == socks.Version4:
		return "rejected", fmt.Sprintf("SOCKS4 reply 0x%02x (request rejected or failed; SOCKS4 has no finer codes)", re.Code4)
	case errors.As(err, &re):
		text = fmt.Sprintf("reply 0x%02x %s", byte(re.Code), re.Code)
		switch re.Code {
		case socks.ConnectionRefused:
			return "refused", text
		case socks.NetworkUnreachable, socks.HostUnreachable, socks.TTLExpired:
			return "unreachable", text
		case socks.NotAllowed:
			return "not-allowed", text
		}
		return "general-failure", text
	case errors.As(err, &se):
		text = fmt.Sprintf("HTTP %s", se.Status)
		switch {
		case errors.Is(se.Err, syscall.ECONNREFUSED):
			return "refused", text
		case se.Code == 403:
			return "not-allowed", text
		case se.Code == 407, se.Code == 401:
			return "auth", text
		case se.Code == 502, se.Code == 503, se.Code == 504:
			return "unreachable", text
		}
		return "general-failure", text
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout", "no answer in time"
	}
	return "error", err.Error()
}

// connectMatrix CONNECTs to the target as an IPv4 literal, a name and an
// IPv6 literal.
func (c *checker) connectMatrix(ctx context.Context) {
	var v4, v6 netip.Addr
	isName := false
	if a, err := netip.ParseAddr(c.tHost); err == nil {
		a = a.Unmap()
		if a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	} else {
		isName = true
		lctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		addrs, _ := c.o.LookupNetIP(lctx, "ip", c.tHost)
		cancel()
		for _, a := range addrs {
			a = a.Unmap()
			if a.Is4() && !v4.IsValid() {
				v4 = a
			}
			if a.Is6() && !v6.IsValid() {
				v6 = a
			}
		}
	}
	socks4 := c.scheme == "socks4" || c.scheme == "socks4a"
	run := func(id, target string, fact **bool, failVerdict Verdict, what string) {
		c.probe(id, func() (Verdict, string) {
			conn, bound, d, err := c.dial(ctx, target, nil)
			if err != nil {
				*fact = ptr(false)
				kind, text := classify(err)
				if kind == "auth" {
					failVerdict = Fail
				}
				return failVerdict, fmt.Sprintf("CONNECT %s (%s): %s", target, what, text)
			}
			conn.Close()
			*fact = ptr(true)
			if c.okTarget == "" {
				c.okTarget = target
			}
			note := ""
			if c.scheme != "http" && c.r.Facts.Connect.BoundAddr == "" {
				c.r.Facts.Connect.BoundAddr = bound.String()
				if bound.Name == "" && (!bound.IP.IsValid() || bound.IP.IsUnspecified()) {
					c.r.Facts.Connect.BoundZero = true
					note = fmt.Sprintf("; BND.ADDR %s says nothing (harmless for CONNECT)", bound)
				} else {
					note = fmt.Sprintf("; BND.ADDR %s", bound)
				}
			}
			return Pass, fmt.Sprintf("CONNECT %s (%s) in %.1f ms%s", target, what, ms(d), note)
		})
	}
	cf := &c.r.Facts.Connect
	if v4.IsValid() {
		run("connect.ipv4", net.JoinHostPort(v4.String(), c.tPort), &cf.IPv4, Fail, "IPv4 literal")
	} else {
		c.skip("connect.ipv4", fmt.Sprintf("%s has no IPv4 address here", c.tHost))
	}
	switch {
	case !isName:
		c.skip("connect.domain", "the target is an IP literal; give --target a name to test remote DNS")
	case c.scheme == "socks4":
		c.skip("connect.domain", "SOCKS4 cannot carry names; socks4a:// can")
	default:
		what := "name resolved by the proxy"
		if c.scheme == "socks5" {
			what = "ATYP 3, name resolved by the proxy"
		} else if c.scheme == "socks4a" {
			what = "SOCKS4a, name resolved by the proxy"
		}
		run("connect.domain", c.o.Target, &cf.Domain, Fail, what)
	}
	switch {
	case socks4:
		c.skip("connect.ipv6", "SOCKS4 cannot carry IPv6 addresses")
	case v6.IsValid():
		run("connect.ipv6", net.JoinHostPort(v6.String(), c.tPort), &cf.IPv6, Warn, "IPv6 literal")
	default:
		c.skip("connect.ipv6", fmt.Sprintf("%s has no IPv6 address here", c.tHost))
	}
}

// ports finds out whether the proxy allows the target's port or only 443
// (like Squid's SSL_ports).
func (c *checker) ports(ctx context.Context) {
	if c.tPort == "443" {
		return
	}
	cf := &c.r.Facts.Connect
	targetOK := (cf.IPv4 != nil && *cf.IPv4) || (cf.Domain != nil && *cf.Domain) || (cf.IPv6 != nil && *cf.IPv6)
	c.probe("connect.ports", func() (Verdict, string) {
		conn, _, _, err := c.dial(ctx, c.o.TLSTarget, nil)
		if err == nil {
			conn.Close()
		}
		_, text := classify(err)
		switch {
		case err == nil && targetOK:
			cf.Only443 = ptr(false)
			return Pass, fmt.Sprintf("ports %s and 443 are both allowed", c.tPort)
		case err == nil:
			cf.Only443 = ptr(true)
			return Warn, fmt.Sprintf("%s works but port %s does not: the proxy allows only port 443 (HTTPS); other ports fail", c.o.TLSTarget, c.tPort)
		case targetOK:
			return Pass, fmt.Sprintf("port %s is allowed; %s failed (%s)", c.tPort, c.o.TLSTarget, text)
		}
		return Fail, fmt.Sprintf("neither port %s nor %s works (%s)", c.tPort, c.o.TLSTarget, text)
	})
}

// failureReplies asks for a closed port and an unroutable host and judges
// the replies: a quick, specific refusal lets `tunsocks run` reset the app
// at once.
func (c *checker) failureReplies(ctx context.Context) {
	cf := &c.r.Facts.Connect
	c.probe("connect.refused", func() (Verdict, string) {
		conn, _, d, err := c.dial(ctx, c.o.RefusedTarget, nil)
		if conn != nil {
			conn.Close()
		}
		kind, text := classify(err)
		cf.RefusedReply, cf.RefusedMS, cf.RefusedText = kind, ms(d), text
		head := fmt.Sprintf("closed port %s: %s in %.1f ms", c.o.RefusedTarget, text, ms(d))
		switch kind {
		case "refused":
			return Pass, head + ": run resets the app's connection at once"
		case "rejected", "unreachable":
			return Pass, head + ": the app gets a reset at once"
		case "success":
			return Fail, head + ": the proxy reports success before it connects, so apps see a connection that closes instead of a refusal"
		case "timeout":
			return Warn, head + ": apps wait for their own timeout instead of a quick refusal"
		case "not-allowed":
			if c.o.RefusedTarget == DefaultRefusedTarget {
				// A server open to others should refuse its own
				// loopback (tunsocks server does by default): that
				// is a quick, specific answer too.
				cf.RefusedText = text + " (the proxy refuses its own loopback)"
				return Pass, head + ": the proxy refuses its own loopback, as a server open to others should, and the app gets a reset at once (--refused-target HOST:PORT checks a closed port elsewhere)"
			}
			return Warn, head + ": the proxy does not allow this destination, so the refusal code could not be checked (try --refused-target)"
		}
		return Warn, head + ": not a 'connection refused' reply; run cannot tell the app why"
	})
	c.probe("connect.unroutable", func() (Verdict, string) {
		conn, _, d, err := c.dial(ctx, c.o.UnroutableTarget, nil)
		if conn != nil {
			conn.Close()
		}
		kind, text := classify(err)
		cf.UnroutableReply, cf.UnroutableMS, cf.UnroutableText = kind, ms(d), text
		head := fmt.Sprintf("unroutable %s: %s in %.1f ms", c.o.UnroutableTarget, text, ms(d))
		switch kind {
		case "unreachable", "rejected", "refused":
			return Pass, head + ": the app gets a reset or unreachable at once"
		case "success":
			return Fail, head + ": the proxy reports success for a host it cannot reach"
		case "timeout":
			return Warn, fmt.Sprintf("unroutable %s: no answer within %v: apps wait for their own timeout", c.o.UnroutableTarget, c.o.Timeout)
		case "not-allowed":
			return Warn, head + ": the proxy does not allow this destination (try --unroutable-target)"
		}
		return Warn, head + ": a general failure, not 'unreachable'"
	})
}

// knownTools maps words of interception CAs' issuers to the tool.
var knownTools = []struct{ word, tool string }{
	{"mitmproxy", "mitmproxy"},
	{"portswigger", "Burp Suite"},
	{"charles", "Charles"},
	{"do_not_trust", "Fiddler"},
	{"fiddler", "Fiddler"},
	{"zscaler", "Zscaler"},
}

// tlsIntercept does a TLS handshake through the proxy to TLSTarget and
// verifies the certificate against the roots: a certificate this system
// does not trust is the mark of an intercepting proxy.
func (c *checker) tlsIntercept(ctx context.Context) {
	c.probe("tls.intercept", func() (Verdict, string) {
		conn, _, _, err := c.dial(ctx, c.o.TLSTarget, nil)
		if err != nil {
			_, text := classify(err)
			return Skip, fmt.Sprintf("CONNECT %s failed (%s); give --tls-target a reachable host:443", c.o.TLSTarget, text)
		}
		defer conn.Close()
		host, _, _ := net.SplitHostPort(c.o.TLSTarget)
		tc := tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		hctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			return Skip, fmt.Sprintf("TLS handshake with %s through the proxy failed: %v", c.o.TLSTarget, err)
		}
		certs := tc.ConnectionState().PeerCertificates
		if len(certs) == 0 {
			return Skip, "the TLS server sent no certificate"
		}
		leaf := certs[0]
		f := &TLSFacts{Target: c.o.TLSTarget, Issuer: leaf.Issuer.String()}
		c.r.Facts.TLS = f
		lower := strings.ToLower(f.Issuer)
		for _, k := range knownTools {
			if strings.Contains(lower, k.word) {
				f.Tool = k.tool
				break
			}
		}
		roots := c.o.Roots
		if roots == nil {
			if roots, err = x509.SystemCertPool(); err != nil {
				return Skip, fmt.Sprintf("no system roots to verify with: %v", err)
			}
		}
		inter := x509.NewCertPool()
		for _, ic := range certs[1:] {
			inter.AddCert(ic)
		}
		_, verr := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
		if verr == nil {
			return Pass, fmt.Sprintf("the certificate of %s verifies against this system's roots (issuer %s): not intercepted", host, f.Issuer)
		}
		f.Intercepted = true
		tool := ""
		if f.Tool != "" {
			tool = " (" + f.Tool + ")"
		}
		return Warn, fmt.Sprintf("TLS is intercepted: the certificate for %s is issued by %q%s, which this system does not trust (%v). Install that CA on the device, or apps will reject their connections",
			host, f.Issuer, tool, shortVerifyErr(verr))
	})
}

func shortVerifyErr(err error) string {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return "unknown authority"
	}
	var he x509.HostnameError
	if errors.As(err, &he) {
		return "wrong host name"
	}
	return err.Error()
}
