// Package socksclient is the upstream SOCKS client: CONNECT, BIND and UDP
// ASSOCIATE over SOCKS5 (RFC 1928, with RFC 1929 username/password), and
// CONNECT and BIND over SOCKS4 and SOCKS4a. A Client is a DialContext-shaped
// dialer, so Clients chain: each hop reaches its server through the previous
// hop.
//
// Names are never resolved here. A domain destination travels as a domain
// (SOCKS5 ATYP 0x03, SOCKS4a) and the server resolves it; plain SOCKS4 has no
// way to carry a name, so a domain over socks4:// is an error that points to
// socks4a://. The one exception is a UDP relay address the server gives as a
// name, which the forward dialer resolves to reach it.
//
// Every failure is a *net.OpError whose Err is the cause: a *socks.ReplyError
// for a refusal by the server (errors.As finds it, and errors.Is(err,
// syscall.ECONNREFUSED) works through it), one of the Err* values of this
// package, a context error, or the I/O error of the connection.
package socksclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/proxyurl"
	"github.com/tunsocks/tunsocks/socks"
)

// Dialer is how a Client reaches its server: a direct dialer for the first
// hop, the previous Client (or another proxy client) for the later hops of
// a chain; package outbound builds chains. ListenPacket also
// uses it with network "udp" to reach the server's UDP relay.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Errors a Client returns (wrapped in a *net.OpError).
var (
	// ErrAuthFailed: the server rejected the RFC 1929 username and password.
	ErrAuthFailed = errors.New("socks5: username/password rejected by server")
	// ErrNoAcceptableMethod: the server accepted none of the offered
	// authentication methods (it answered 0xFF).
	ErrNoAcceptableMethod = errors.New("socks5: no acceptable authentication method")
	// ErrUDPUnsupported: UDP ASSOCIATE cannot be done with this Client
	// (SOCKS4, a chain of hops, or the server refused the command).
	ErrUDPUnsupported = errors.New("UDP ASSOCIATE not supported")
)

// DefaultPort is the port of a proxy URL that names none.
const DefaultPort = 1080

// Client speaks SOCKS to one server. It is safe for concurrent use; its
// exported fields must be set before the first use and not changed after.
type Client struct {
	// UDPFragmentSize, when positive, makes UDPConn.WriteTo split payloads
	// larger than this many bytes into RFC 1928 section 7 fragments. Few
	// servers reassemble fragments; this exists to test those that do.
	UDPFragmentSize int
	// UDPReassemblyTimeout is the reassembly timer for fragmented datagrams
	// received on a UDPConn; 0 means socks.DefaultReassemblyTimeout.
	UDPReassemblyTimeout time.Duration

	version byte // socks.Version4 or socks.Version5
	socks4a bool // SOCKS4 with domain support
	server  string
	srvAddr net.Addr // server as a net.Addr, for errors
	user    string
	pass    string
	forward Dialer
}

// Parse is New for a URL in text form.
func Parse(rawURL string, forward Dialer) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("socksclient: proxy URL: %w", err)
	}
	return New(u, forward)
}

// New returns a Client for the server named by u:
//
//	socks5://[user:pass@]host[:port]   SOCKS5; names always resolved by the server
//	socks5h://...                      the same (accepted for curl compatibility)
//	socks4://[userid@]host[:port]      SOCKS4: IPv4 destinations only
//	socks4a://[userid@]host[:port]     SOCKS4a: IPv4 or domain destinations
//
// The port defaults to 1080. forward reaches the server; nil means a plain
// direct.Dialer.
func New(u *url.URL, forward Dialer) (*Client, error) {
	if u == nil {
		return nil, errors.New("socksclient: nil proxy URL")
	}
	if err := CheckURL(u); err != nil {
		return nil, fmt.Errorf("socksclient: proxy %w", err)
	}
	c := &Client{forward: forward}
	if c.forward == nil {
		c.forward = &direct.Dialer{}
	}
	switch u.Scheme {
	case "socks5", "socks5h":
		c.version = socks.Version5
	case "socks4":
		c.version = socks.Version4
	case "socks4a":
		c.version, c.socks4a = socks.Version4, true
	}
	c.server, _ = proxyurl.HostPort(u, DefaultPort)
	c.srvAddr = netAddr("tcp", c.server)
	if u.User != nil {
		c.user = u.User.Username()
		c.pass, _ = u.User.Password()
	}
	return c, nil
}

// CheckURL reports what is wrong with u as a SOCKS proxy URL (see New), or
// nil. Its errors name the URL without the password and say what would be
// right.
func CheckURL(u *url.URL) error {
	switch u.Scheme {
	case "socks5", "socks5h", "socks4", "socks4a":
	case "":
		return fmt.Errorf("url %q has no scheme; use socks5://, socks5h://, socks4:// or socks4a://", redact(u))
	default:
		return fmt.Errorf("url scheme %q is not supported; use socks5, socks5h, socks4 or socks4a", u.Scheme)
	}
	if _, err := proxyurl.HostPort(u, DefaultPort); err != nil {
		return err
	}
	if u.User == nil {
		return nil
	}
	user := u.User.Username()
	pass, hasPass := u.User.Password()
	if u.Scheme == "socks4" || u.Scheme == "socks4a" {
		if hasPass {
			return fmt.Errorf("%s has no passwords, only a user ID; drop the password or use socks5", u.Scheme)
		}
		if len(user) > socks.MaxUserIDLen {
			return fmt.Errorf("SOCKS4 user ID longer than %d bytes", socks.MaxUserIDLen)
		}
		return nil
	}
	if !hasPass || len(user) < 1 || len(user) > 255 || len(pass) < 1 || len(pass) > 255 {
		return errors.New("socks5 username and password must each be 1 to 255 bytes (RFC 1929); want socks5://user:pass@host:port")
	}
	return nil
}

// redact hides a password in u for error messages.
func redact(u *url.URL) string { return u.Redacted() }

// Server returns the "host:port" of the server the Client speaks to.
func (c *Client) Server() string { return c.server }

// DialContext opens a TCP connection to address through the server (the
// CONNECT command). network is "tcp", "tcp4" or "tcp6"; address is
// "host:port" and a host that is not an IP literal is sent as a name.
//
// The returned connection is the one the forward dialer made (a
// *net.TCPConn for a direct first hop), so CloseWrite and splicing work as
// on a direct connection; its RemoteAddr is the server's address. Only when
// the target's first bytes came in together with the server's reply is it a
// wrapper that returns them first (and still has CloseWrite).
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	dst, err := c.destination(network, address)
	if err != nil {
		return nil, c.opError("socks connect", network, addrOf(address), err)
	}
	conn, _, err := c.request(ctx, network, socks.CmdConnect, dst)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// destination checks network and address for a stream command and returns
// the address to send.
func (c *Client) destination(network, address string) (socks.Addr, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return socks.Addr{}, fmt.Errorf("socksclient: network %q is not supported: use tcp, tcp4 or tcp6 (ListenPacket does UDP)", network)
	}
	dst, err := socks.ParseAddr(address)
	if err != nil {
		return socks.Addr{}, err
	}
	if dst.Name == "" {
		if network == "tcp4" && !dst.IP.Is4() {
			return socks.Addr{}, fmt.Errorf("socksclient: %s is not an IPv4 address (network tcp4)", dst.IP)
		}
		if network == "tcp6" && dst.IP.Is4() {
			return socks.Addr{}, fmt.Errorf("socksclient: %s is not an IPv6 address (network tcp6)", dst.IP)
		}
	}
	if c.version == socks.Version4 {
		switch {
		case dst.Name != "" && !c.socks4a:
			return socks.Addr{}, fmt.Errorf("socksclient: SOCKS4 cannot carry the name %q and names are never resolved locally; use a socks4a:// or socks5:// proxy URL", dst.Name)
		case dst.Name == "" && !dst.IP.Is4():
			return socks.Addr{}, fmt.Errorf("socksclient: SOCKS4 cannot carry the IPv6 destination %s; use a socks5:// proxy URL", dst.IP)
		}
	}
	return dst, nil
}

// request dials the server, negotiates and sends one command. On success it
// returns the connection (deadline cleared) and the reply's bound address.
func (c *Client) request(ctx context.Context, network string, cmd socks.Command, dst socks.Addr) (net.Conn, socks.Addr, error) {
	op := "socks " + opName(cmd)
	conn, err := c.forward.DialContext(ctx, "tcp", c.server)
	if err != nil {
		return nil, socks.Addr{}, c.opError("dial", network, dst, err)
	}
	var bound socks.Addr
	hc := newHandshakeConn(conn)
	err = withContext(ctx, conn, func() error {
		var err error
		bound, err = c.handshake(hc, cmd, dst)
		return err
	})
	if err != nil {
		hc.release()
		conn.Close()
		return nil, socks.Addr{}, c.opError(op, network, dst, err)
	}
	return hc.finish(), bound, nil
}

// Handshake runs the SOCKS handshake on conn, a connection to the Client's
// server that the caller dialed itself: the SOCKS5 authentication and the
// request cmd for dst (SOCKS4/4a: the request alone). It returns the
// connection to use from then on (conn, or a wrapper returning bytes that
// came in right behind the reply) and the reply's BND.ADDR exactly as the
// server sent it: unlike DialContext and ListenPacket, nothing is replaced
// or resolved. It is for callers that examine the exchange itself, such as
// `tunsocks check`. ctx bounds the handshake; conn's deadline is cleared
// after it. On failure conn is left open and the error is a *net.OpError
// as from DialContext.
func (c *Client) Handshake(ctx context.Context, conn net.Conn, cmd socks.Command, dst socks.Addr) (net.Conn, socks.Addr, error) {
	var bound socks.Addr
	hc := newHandshakeConn(conn)
	err := withContext(ctx, conn, func() error {
		var err error
		bound, err = c.handshake(hc, cmd, dst)
		return err
	})
	if err != nil {
		hc.release()
		return nil, socks.Addr{}, c.opError("socks "+opName(cmd), "tcp", dst, err)
	}
	return hc.finish(), bound, nil
}

// Version returns the SOCKS version the Client speaks (socks.Version4 for
// socks4:// and socks4a://) and whether it sends names (SOCKS5, SOCKS4a).
func (c *Client) Version() (version byte, names bool) {
	return c.version, c.version == socks.Version5 || c.socks4a
}

func opName(cmd socks.Command) string {
	switch cmd {
	case socks.CmdConnect:
		return "connect"
	case socks.CmdBind:
		return "bind"
	case socks.CmdUDPAssociate:
		return "udp associate"
	}
	return cmd.String()
}

// aLongTimeAgo is a deadline in the past: setting it aborts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// withContext runs fn, which does blocking I/O on conn, so that the
// context's deadline applies to it and its cancellation aborts it at once.
// The connection's deadline is cleared afterwards. When the context ends
// first, the context's error is returned.
func withContext(ctx context.Context, conn net.Conn, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		if err := conn.SetDeadline(deadline); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(aLongTimeAgo) })
	err := fn()
	if !stop() {
		// The context ended and poked the connection; whatever fn saw, the
		// context is the cause. The caller closes the connection.
		return ctx.Err()
	}
	if err != nil {
		if hasDeadline && isTimeout(err) && !time.Now().Before(deadline) {
			return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return err
	}
	if hasDeadline {
		if err := conn.SetDeadline(time.Time{}); err != nil {
			return err
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// handshake negotiates on conn and sends cmd for dst; it returns the bound
// address of the (first) reply.
func (c *Client) handshake(conn net.Conn, cmd socks.Command, dst socks.Addr) (socks.Addr, error) {
	if c.version == socks.Version4 {
		return c.request4(conn, cmd, dst)
	}
	if err := c.authenticate(conn); err != nil {
		return socks.Addr{}, err
	}
	b, err := socks.AppendRequest(make([]byte, 0, 262), socks.Request{Command: cmd, Addr: dst})
	if err != nil {
		return socks.Addr{}, err
	}
	if _, err := conn.Write(b); err != nil {
		return socks.Addr{}, err
	}
	return readReply5(conn)
}

// readReply5 reads a SOCKS5 reply and turns a failure code into a
// *socks.ReplyError.
func readReply5(conn net.Conn) (socks.Addr, error) {
	rep, bound, err := socks.ReadReply(conn)
	if rep != socks.Succeeded {
		// A refusal counts even if the bound address after it is garbled.
		return socks.Addr{}, &socks.ReplyError{Version: socks.Version5, Code: rep}
	}
	if err != nil {
		return socks.Addr{}, err
	}
	return bound, nil
}

// authenticate runs the SOCKS5 method negotiation and, when the server asks
// for it, the RFC 1929 sub-negotiation.
func (c *Client) authenticate(conn net.Conn) error {
	methods := []socks.Method{socks.MethodNoAuth}
	if c.user != "" {
		methods = append(methods, socks.MethodUserPass)
	}
	b, err := socks.AppendGreeting(make([]byte, 0, 4), methods...)
	if err != nil {
		return err
	}
	if _, err := conn.Write(b); err != nil {
		return err
	}
	m, err := socks.ReadMethodSelection(conn)
	if err != nil {
		return err
	}
	switch {
	case m == socks.MethodNoAuth:
		return nil
	case m == socks.MethodUserPass && c.user != "":
		b, err := socks.AppendUserPass(make([]byte, 0, 3+len(c.user)+len(c.pass)), c.user, c.pass)
		if err != nil {
			return err
		}
		if _, err := conn.Write(b); err != nil {
			return err
		}
		ok, err := socks.ReadUserPassStatus(conn)
		if err != nil {
			return err
		}
		if !ok {
			return ErrAuthFailed
		}
		return nil
	case m == socks.MethodNoAcceptable:
		if c.user == "" {
			return fmt.Errorf("%w (offered: none; the server may want a username and password)", ErrNoAcceptableMethod)
		}
		return fmt.Errorf("%w (offered: none, username/password)", ErrNoAcceptableMethod)
	default:
		return fmt.Errorf("socks5: server chose authentication method 0x%02x, which was not offered", byte(m))
	}
}

// request4 sends a SOCKS4/4a request and reads its reply.
func (c *Client) request4(conn net.Conn, cmd socks.Command, dst socks.Addr) (socks.Addr, error) {
	b, err := socks.AppendRequest4(make([]byte, 0, 16+len(c.user)+len(dst.Name)), socks.Request4{Command: cmd, Addr: dst, UserID: c.user})
	if err != nil {
		return socks.Addr{}, err
	}
	if _, err := conn.Write(b); err != nil {
		return socks.Addr{}, err
	}
	return readReply4(conn)
}

func readReply4(conn net.Conn) (socks.Addr, error) {
	code, bound, err := socks.ReadReply4(conn)
	if err != nil {
		return socks.Addr{}, err
	}
	if code != socks.Reply4Granted {
		return socks.Addr{}, &socks.ReplyError{Version: socks.Version4, Code: socks.GeneralFailure, Code4: code}
	}
	return socks.AddrFromAddrPort(bound), nil
}

// opError wraps err with the operation, the server and the destination
// (nil when there is none, or it did not parse).
func (c *Client) opError(op, network string, dst net.Addr, err error) error {
	return &net.OpError{Op: op, Net: network, Source: c.srvAddr, Addr: dst, Err: err}
}

// addrOf returns address as a socks.Addr, or nil when it does not parse
// (the parse error then says what is wrong with it).
func addrOf(address string) net.Addr {
	a, err := socks.ParseAddr(address)
	if err != nil {
		return nil
	}
	return a
}

// serverHost returns the IP of the server conn is connected to, if it is a
// plain TCP connection, or else the server's host from the URL.
func (c *Client) serverHost(conn net.Conn) string {
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok && ta.IP != nil {
		if ap := ta.AddrPort(); ap.Addr().IsValid() {
			return ap.Addr().Unmap().String()
		}
	}
	host, _, _ := net.SplitHostPort(c.server)
	return host
}

// boundAddr resolves a reply's bound address for the caller: an
// unspecified IP (0.0.0.0 or ::) stands for the server's own address.
func (c *Client) boundAddr(conn net.Conn, bound socks.Addr) string {
	if bound.Name == "" && (!bound.IP.IsValid() || bound.IP.IsUnspecified()) {
		return net.JoinHostPort(c.serverHost(conn), strconv.Itoa(int(bound.Port)))
	}
	return bound.String()
}

// netAddr returns a *net.TCPAddr or *net.UDPAddr for an IP "host:port", a
// socks.Addr for a name, and nil for something else.
func netAddr(network, hostport string) net.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return addrOf(hostport)
	}
	if network == "udp" {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}
