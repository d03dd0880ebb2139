package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/tunsocks/tunsocks/httpconnect"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
)

// proxyPort is the URL's port or the scheme's default.
func (c *checker) proxyPort() string {
	if p := c.o.Proxy.Port(); p != "" {
		return p
	}
	if c.scheme == "http" {
		return strconv.Itoa(httpconnect.DefaultPort)
	}
	return strconv.Itoa(socksclient.DefaultPort)
}

// reach resolves the proxy's host and connects to it over each address
// family; the first family that answers carries the other probes.
func (c *checker) reach(ctx context.Context) bool {
	host := c.o.Proxy.Hostname()
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a.Unmap()}
	} else {
		var lerr error
		v := c.probe("reach.resolve", func() (Verdict, string) {
			lctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
			defer cancel()
			addrs, lerr = c.o.LookupNetIP(lctx, "ip", host)
			if lerr != nil || len(addrs) == 0 {
				return Fail, fmt.Sprintf("cannot resolve the proxy's name %s: %v", host, lerr)
			}
			return Pass, fmt.Sprintf("%s is %v", host, addrs)
		})
		if v == Fail {
			return false
		}
	}
	var first4, first6 netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() && !first4.IsValid() {
			first4 = a
		}
		if a.Is6() && !first6.IsValid() {
			first6 = a
		}
	}
	for _, fam := range []struct {
		id string
		a  netip.Addr
	}{{"reach.ipv4", first4}, {"reach.ipv6", first6}} {
		if !fam.a.IsValid() {
			continue
		}
		addr := net.JoinHostPort(fam.a.String(), c.proxyPort())
		c.probe(fam.id, func() (Verdict, string) {
			dctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
			defer cancel()
			start := time.Now()
			conn, err := c.o.Dialer.DialContext(dctx, "tcp", addr)
			if err != nil {
				return Fail, fmt.Sprintf("TCP to %s failed: %v", addr, err)
			}
			conn.Close()
			if c.server == "" {
				c.server = addr
			}
			c.r.Facts.Families = append(c.r.Facts.Families, fam.id[len("reach."):])
			return Pass, fmt.Sprintf("TCP to %s in %.1f ms", addr, ms(time.Since(start)))
		})
	}
	return c.server != ""
}

// identify finds out what the proxy speaks: first the URL's protocol,
// then the others, each on a fresh connection.
func (c *checker) identify(ctx context.Context) bool {
	v := c.probe("protocol", func() (Verdict, string) {
		want := c.scheme
		if want == "socks4a" {
			want = "socks4"
		}
		order := []string{want}
		for _, p := range []string{"socks5", "socks4", "http"} {
			if p != want {
				order = append(order, p)
			}
		}
		var notes []string
		for _, p := range order {
			got, note := c.speaks(ctx, p)
			if note != "" {
				notes = append(notes, note)
			}
			if got == "" {
				continue
			}
			c.r.Facts.Protocol = got
			if got == want {
				return Pass, "the proxy speaks " + protoName(got)
			}
			if got == "tls" {
				return Fail, "the proxy speaks TLS (an https:// proxy); tunsocks supports plain http:// and SOCKS upstreams"
			}
			u := *c.o.Proxy
			u.Scheme = got
			if got == "socks4" && c.scheme != "socks4" {
				u.Scheme = "socks4a"
			}
			c.r.Facts.SuggestedURL = u.Redacted()
			return Fail, fmt.Sprintf("the URL says %s but the proxy speaks %s: use %s", protoName(want), protoName(got), u.Redacted())
		}
		return Fail, fmt.Sprintf("no SOCKS or HTTP proxy answers at %s (%v)", c.server, notes)
	})
	return v != Fail
}

func protoName(p string) string {
	switch p {
	case "socks5":
		return "SOCKS5"
	case "socks4", "socks4a":
		return "SOCKS4"
	case "http":
		return "HTTP CONNECT"
	}
	return p
}

// speaks sends protocol p's opening on a fresh connection and classifies
// the first bytes of the answer ("" when there was none).
func (c *checker) speaks(ctx context.Context, p string) (string, string) {
	wait := min(c.o.Timeout, 3*time.Second)
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	conn, err := c.o.Dialer.DialContext(dctx, "tcp", c.server)
	if err != nil {
		return "", p + ": " + err.Error()
	}
	defer conn.Close()
	var hello []byte
	switch p {
	case "socks5":
		hello = []byte{socks.Version5, 1, byte(socks.MethodNoAuth)}
		if c.user != "" {
			hello = []byte{socks.Version5, 2, byte(socks.MethodNoAuth), byte(socks.MethodUserPass)}
		}
	case "socks4":
		// A CONNECT to port 1 of the proxy host itself: the answer's
		// first two bytes are all that matter, and nothing leaves the
		// proxy host.
		hello, _ = socks.AppendRequest4(nil, socks.Request4{Command: socks.CmdConnect, Addr: socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}, UserID: c.user})
	case "http":
		hello = []byte("OPTIONS * HTTP/1.1\r\nHost: " + c.server + "\r\n\r\n")
	}
	conn.SetDeadline(time.Now().Add(wait))
	if _, err := conn.Write(hello); err != nil {
		return "", p + ": " + err.Error()
	}
	b := make([]byte, 16)
	n, err := io.ReadAtLeast(conn, b, 2)
	b = b[:n]
	switch {
	case n >= 2 && b[0] == socks.Version5 && p == "socks5":
		return "socks5", ""
	case n >= 2 && b[0] == 0 && b[1] >= socks.Reply4Granted && b[1] <= socks.Reply4IdentMismatch:
		return "socks4", ""
	case bytes.HasPrefix(b, []byte("HTTP/")):
		return "http", ""
	case n >= 2 && b[0] == 0x15 && b[1] == 0x03: // a TLS alert
		return "tls", ""
	case n >= 2 && b[0] == socks.Version5:
		return "socks5", ""
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Sprintf("%s: %v", p, err)
	}
	return "", fmt.Sprintf("%s: answer % x", p, b)
}

// methods offers the SOCKS5 methods one at a time and, with credentials,
// checks that a wrong password is refused.
func (c *checker) methods(ctx context.Context) bool {
	var accepted []string
	v := c.probe("socks5.methods", func() (Verdict, string) {
		var refused []string
		for _, m := range []struct {
			m    socks.Method
			name string
		}{{socks.MethodNoAuth, "none"}, {socks.MethodUserPass, "username"}, {socks.MethodGSSAPI, "gssapi"}} {
			ok, err := c.offer(ctx, m.m)
			if err != nil {
				return Fail, fmt.Sprintf("method negotiation failed: %v", err)
			}
			if ok {
				accepted = append(accepted, m.name)
			} else {
				refused = append(refused, m.name)
			}
		}
		c.r.Facts.AuthMethods = accepted
		has := func(s string) bool {
			for _, a := range accepted {
				if a == s {
					return true
				}
			}
			return false
		}
		list := fmt.Sprintf("accepts %v, refuses %v", accepted, refused)
		switch {
		case has("none") && c.user != "":
			c.r.Facts.OpenProxy = ptr(true)
			return Warn, list + ": it serves clients without credentials, so anyone who reaches it can use it (an open proxy)"
		case has("none"):
			c.r.Facts.OpenProxy = ptr(true)
			return Pass, list
		case has("username") && c.user == "":
			return Fail, list + ": it wants a username and password; put them in the URL: socks5://user:pass@" + c.o.Proxy.Host
		case has("username"):
			return Pass, list
		case has("gssapi"):
			return Fail, list + ": only GSSAPI (Kerberos), which tunsocks does not speak"
		}
		return Fail, list + ": no method tunsocks can use"
	})
	if v == Fail {
		return false
	}
	if c.user == "" || !contains(accepted, "username") {
		return true
	}
	v = c.probe("socks5.auth", func() (Verdict, string) {
		ok, err := c.userPass(ctx, c.user, c.pass)
		if err != nil {
			return Fail, fmt.Sprintf("username/password exchange failed: %v", err)
		}
		if !ok {
			return Fail, fmt.Sprintf("the proxy rejects the username and password of the URL (user %q)", c.user)
		}
		bad, err := c.userPass(ctx, c.user, c.pass+"-wrong")
		if err != nil {
			return Fail, fmt.Sprintf("username/password exchange with a wrong password failed: %v", err)
		}
		if bad {
			c.r.Facts.OpenProxy = ptr(true)
			return Warn, "the proxy accepts a wrong password too: it does not really authenticate (an open proxy)"
		}
		if c.r.Facts.OpenProxy == nil {
			c.r.Facts.OpenProxy = ptr(false)
		}
		return Pass, "the credentials are accepted and a wrong password is refused"
	})
	return v != Fail
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// offer sends a greeting with method m alone and reports whether the proxy
// chose it.
func (c *checker) offer(ctx context.Context, m socks.Method) (bool, error) {
	var chosen socks.Method
	err := c.onConn(ctx, func(conn net.Conn) error {
		b, _ := socks.AppendGreeting(nil, m)
		if _, err := conn.Write(b); err != nil {
			return err
		}
		var err error
		chosen, err = socks.ReadMethodSelection(conn)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			chosen, err = socks.MethodNoAcceptable, nil // closed on us: not accepted
		}
		return err
	})
	return chosen == m, err
}

// userPass runs method 0x02 with user and pass and reports the status.
func (c *checker) userPass(ctx context.Context, user, pass string) (bool, error) {
	var ok bool
	err := c.onConn(ctx, func(conn net.Conn) error {
		b, _ := socks.AppendGreeting(nil, socks.MethodUserPass)
		if _, err := conn.Write(b); err != nil {
			return err
		}
		m, err := socks.ReadMethodSelection(conn)
		if err != nil {
			return err
		}
		if m != socks.MethodUserPass {
			return fmt.Errorf("the proxy chose method 0x%02x instead of username/password", byte(m))
		}
		if b, err = socks.AppendUserPass(nil, user, pass); err != nil {
			return err
		}
		if _, err := conn.Write(b); err != nil {
			return err
		}
		ok, err = socks.ReadUserPassStatus(conn)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil // closed without a status: refused
		}
		return err
	})
	return ok, err
}

// onConn runs fn on a fresh connection to the proxy with the probe
// timeout as its deadline.
func (c *checker) onConn(ctx context.Context, fn func(net.Conn) error) error {
	dctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	conn, err := c.o.Dialer.DialContext(dctx, "tcp", c.server)
	if err != nil {
		return err
	}
	defer conn.Close()
	d, _ := dctx.Deadline()
	conn.SetDeadline(d)
	stop := context.AfterFunc(dctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	return fn(conn)
}

// proxyURL returns the URL with the host replaced by the address that
// answered, so later probes do not resolve it again; user overrides the
// credentials when not nil.
func (c *checker) proxyURL(user *url.Userinfo) *url.URL {
	u := *c.o.Proxy
	u.Host = c.server
	if user != nil {
		u.User = user
	}
	return &u
}
