// Package httpconnect is an upstream that tunnels TCP through an HTTP proxy
// with the CONNECT method (RFC 9110 section 9.3.6), so that HTTP-only
// proxies such as Burp or Charles can carry tunsocks' flows.
//
// The destination host is sent as given: a domain stays a domain and the
// proxy resolves it. Failures come back as *net.OpError{Op: "proxyconnect"}
// whose cause maps to the right SOCKS reply with socks.ReplyForError: a 403
// wraps socks.ErrNotAllowed, a 502 or 503 syscall.EHOSTUNREACH, a 504
// syscall.ETIMEDOUT.
package httpconnect

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/proxyurl"
	"github.com/tunsocks/tunsocks/socks"
)

// DefaultPort is the proxy port when the URL names none.
const DefaultPort = 8080

// MaxHeader bounds the proxy's status line and headers together.
const MaxHeader = 16 << 10

// Dialer reaches the proxy.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Client dials TCP destinations through one HTTP CONNECT proxy. It is safe
// for concurrent use.
type Client struct {
	server  string // host:port of the proxy
	auth    string // Proxy-Authorization value; "" for none
	forward Dialer
}

// New returns a Client for the proxy u: http://[user[:pass]@]host[:port]
// (port 8080 by default). forward reaches the proxy; nil means a plain
// direct.Dialer. https:// (TLS to the proxy) is not supported yet.
func New(u *url.URL, forward Dialer) (*Client, error) {
	if u == nil {
		return nil, errors.New("httpconnect: nil proxy URL")
	}
	if err := CheckURL(u); err != nil {
		return nil, fmt.Errorf("httpconnect: proxy %w", err)
	}
	server, _ := proxyurl.HostPort(u, DefaultPort)
	c := &Client{server: server, forward: forward}
	if c.forward == nil {
		c.forward = &direct.Dialer{}
	}
	if u.User != nil {
		pass, _ := u.User.Password()
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	return c, nil
}

// CheckURL reports what is wrong with u as an HTTP proxy URL (see New), or
// nil. Its errors name the URL without the password and say what would be
// right.
func CheckURL(u *url.URL) error {
	switch strings.ToLower(u.Scheme) {
	case "http":
	case "https":
		return fmt.Errorf("url %q: https:// (TLS to the proxy) is not supported yet; use http://", u.Redacted())
	case "":
		return fmt.Errorf("url %q has no scheme; want http://host:port", u.Redacted())
	default:
		return fmt.Errorf("url scheme %q is not supported; want http://host:port", u.Scheme)
	}
	if _, err := proxyurl.HostPort(u, DefaultPort); err != nil {
		return err
	}
	if u.User != nil && strings.Contains(u.User.Username(), ":") {
		return errors.New("the proxy user name cannot contain ':' (Basic authentication)")
	}
	return nil
}

// Server returns the proxy's host:port.
func (c *Client) Server() string { return c.server }

// DialContext connects to address ("host:port"; host an IP address or a
// name the proxy resolves) through the proxy. network must be "tcp". The
// handshake ends at once when ctx is done and obeys ctx's deadline; the
// returned connection does not depend on ctx. It keeps CloseWrite when the
// connection to the proxy has it.
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	target, err := checkTarget(network, address)
	if err != nil {
		return nil, c.opError(network, address, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, c.opError(network, target, err)
	}
	conn, err := c.forward.DialContext(ctx, "tcp", c.server)
	if err != nil {
		return nil, c.opError(network, target, fmt.Errorf("httpconnect: dial proxy %s: %w", c.server, err))
	}
	out, err := c.handshake(ctx, conn, target)
	if err != nil {
		conn.Close()
		return nil, c.opError(network, target, err)
	}
	return out, nil
}

// checkTarget validates the destination and returns it as host:port, with
// brackets around an IPv6 address.
func checkTarget(network, address string) (string, error) {
	if network != "tcp" {
		return "", fmt.Errorf("httpconnect: network %q is not supported; HTTP CONNECT carries TCP only", network)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return "", fmt.Errorf("httpconnect: address %q: want host:port", address)
	}
	if host == "" || len(host) > 255 {
		return "", fmt.Errorf("httpconnect: address %q: want host:port with a host", address)
	}
	for i := 0; i < len(host); i++ {
		// No control characters, spaces or delimiters: the host goes into
		// the request line and the Host header verbatim.
		if b := host[i]; b <= ' ' || b == 0x7f || strings.IndexByte(`/?#@"<>\`, b) >= 0 {
			return "", fmt.Errorf("httpconnect: address %q: invalid character %q in host", address, b)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("httpconnect: address %q: port %q is not a number from 1 to 65535", address, port)
	}
	return net.JoinHostPort(host, port), nil
}

func (c *Client) opError(network, target string, err error) error {
	// net.OpError.Timeout looks at its Err only, not down the chain.
	if _, ok := err.(interface{ Timeout() bool }); !ok {
		var t interface{ Timeout() bool }
		if errors.As(err, &t) && t.Timeout() {
			err = timeoutError{err}
		}
	}
	var addr net.Addr = hostAddr(target)
	if ap, perr := netip.ParseAddrPort(target); perr == nil {
		addr = net.TCPAddrFromAddrPort(ap)
	}
	return &net.OpError{Op: "proxyconnect", Net: network, Addr: addr, Err: err}
}

// timeoutError marks a wrapped error whose cause is a timeout.
type timeoutError struct{ error }

func (e timeoutError) Unwrap() error { return e.error }
func (e timeoutError) Timeout() bool { return true }

// hostAddr is a destination given by name.
type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

func (c *Client) handshake(ctx context.Context, conn net.Conn, target string) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	out, err := c.exchange(conn, target)
	if !stop() {
		// ctx ended: the conn is closed (or being closed); whatever the
		// exchange returned, the cause is ctx.
		return nil, fmt.Errorf("httpconnect: CONNECT through proxy %s: %w", c.server, context.Cause(ctx))
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("httpconnect: CONNECT through proxy %s: %w", c.server, context.Cause(ctx))
		}
		// The conn's deadline (ctx's) may fire just before ctx notices.
		if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
			return nil, fmt.Errorf("httpconnect: proxy %s did not answer CONNECT in time: %w", c.server, context.DeadlineExceeded)
		}
		return nil, err
	}
	if _, ok := ctx.Deadline(); ok {
		conn.SetDeadline(time.Time{})
	}
	return out, nil
}

// exchange sends the CONNECT request and reads the answer.
func (c *Client) exchange(conn net.Conn, target string) (net.Conn, error) {
	var req bytes.Buffer
	req.WriteString("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n")
	if c.auth != "" {
		req.WriteString("Proxy-Authorization: " + c.auth + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return nil, fmt.Errorf("httpconnect: send CONNECT to proxy %s: %w", c.server, err)
	}
	head, rest, err := readHeader(conn)
	if err != nil {
		return nil, fmt.Errorf("httpconnect: proxy %s: %w", c.server, err)
	}
	if err := c.checkResponse(head); err != nil {
		return nil, err
	}
	return wrap(conn, rest), nil
}

// readHeader reads up to the blank line ending the header block. It
// returns the block and the bytes read past it.
func readHeader(r io.Reader) (head, rest []byte, err error) {
	buf := make([]byte, 0, 1024)
	for reads := 0; reads < MaxHeader+64; reads++ {
		if len(buf) == cap(buf) {
			if cap(buf) >= MaxHeader {
				return nil, nil, fmt.Errorf("response header longer than %d bytes (16 KiB); is it an HTTP proxy?", MaxHeader)
			}
			nb := make([]byte, len(buf), min(2*cap(buf), MaxHeader))
			copy(nb, buf)
			buf = nb
		}
		from := max(0, len(buf)-3)
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if end := headerEnd(buf, from); end >= 0 {
			if len(buf) > end {
				rest = append([]byte(nil), buf[end:]...)
			}
			return buf[:end], rest, nil
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if len(buf) == 0 {
					return nil, nil, fmt.Errorf("closed the connection without answering CONNECT: %w", io.ErrUnexpectedEOF)
				}
				return nil, nil, fmt.Errorf("closed the connection in the middle of its answer: %w", io.ErrUnexpectedEOF)
			}
			return nil, nil, fmt.Errorf("read answer: %w", rerr)
		}
	}
	return nil, nil, errors.New("response header arrives in too many pieces")
}

// headerEnd returns the index just past "\r\n\r\n" (or a bare "\n\n") in
// b, searching from from, or -1.
func headerEnd(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

// checkResponse parses the status line and headers and turns a refusal
// into an error.
func (c *Client) checkResponse(head []byte) error {
	line, _, _ := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	proto, status, _ := strings.Cut(string(line), " ")
	codeText, _, _ := strings.Cut(status, " ")
	code, cerr := strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/1.") || len(codeText) != 3 || cerr != nil || code < 100 {
		return fmt.Errorf("httpconnect: proxy %s: not an HTTP response: %q", c.server, cut(string(line), 64))
	}
	if code >= 200 && code <= 299 {
		return nil // the headers of a success do not matter
	}
	tp := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(head), len(head)))
	tp.ReadLine() // the status line, read above
	hdr, err := tp.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("httpconnect: proxy %s answered %q with a bad header: %w", c.server, cut(status, 64), err)
	}
	return c.statusError(code, strings.TrimSpace(status), hdr)
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// StatusError is a proxy's refusal to CONNECT.
type StatusError struct {
	Proxy  string // host:port of the proxy
	Code   int    // HTTP status code
	Status string // as the proxy wrote it, e.g. "407 Proxy Authentication Required"
	Msg    string // what it means for the user
	Err    error  // the cause it stands for (socks.ErrNotAllowed, syscall.EHOSTUNREACH, ...), or nil
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("httpconnect: proxy %s answered %q: %s", e.Proxy, e.Status, e.Msg)
}

func (e *StatusError) Unwrap() error { return e.Err }

// Timeout reports whether the proxy timed out reaching the target (504).
func (e *StatusError) Timeout() bool { return e.Code == 504 }

func (c *Client) statusError(code int, status string, hdr textproto.MIMEHeader) error {
	e := &StatusError{Proxy: c.server, Code: code, Status: cut(status, 128)}
	switch code {
	case 407:
		scheme, _, _ := strings.Cut(strings.TrimSpace(hdr.Get("Proxy-Authenticate")), " ")
		switch {
		case scheme != "" && !strings.EqualFold(scheme, "Basic"):
			e.Msg = fmt.Sprintf("proxy authentication required; the proxy wants %s, only Basic is supported", cut(scheme, 32))
		case c.auth == "":
			e.Msg = "proxy authentication required; put the credentials in the URL: http://user:pass@host:port"
		default:
			e.Msg = "proxy authentication failed; the proxy rejected the user name or password"
		}
		e.Err = ErrAuth
	case 403:
		e.Msg = "the proxy does not allow this destination"
		e.Err = socks.ErrNotAllowed
	case 502, 503:
		e.Msg = "the proxy could not reach the target"
		e.Err = syscall.EHOSTUNREACH
	case 504:
		e.Msg = "the proxy timed out reaching the target"
		e.Err = syscall.ETIMEDOUT
	case 400, 405, 501:
		e.Msg = "the proxy does not support CONNECT to this destination"
	default:
		e.Msg = "the proxy refused CONNECT"
	}
	// Squid says why in a header: "ERR_CONNECT_FAIL 111" (errno).
	if f := strings.Fields(hdr.Get("X-Squid-Error")); len(f) == 2 && f[0] == "ERR_CONNECT_FAIL" {
		switch f[1] {
		case "111":
			e.Msg, e.Err = "the target refused the connection", syscall.ECONNREFUSED
		case "101":
			e.Msg, e.Err = "the proxy has no route to the target's network", syscall.ENETUNREACH
		case "110":
			e.Msg, e.Err = "the proxy timed out reaching the target", syscall.ETIMEDOUT
		}
	}
	return e
}

// ErrAuth is the cause of a 407: the proxy wants credentials, or rejected
// the ones given.
var ErrAuth = errors.New("proxy authentication failed")
