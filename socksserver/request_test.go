package socksserver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// requestDialer records the request of every call and refuses it.
type requestDialer struct {
	mu   sync.Mutex
	reqs []Request
	ok   []bool
}

func (d *requestDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	r, ok := RequestFromContext(ctx)
	d.mu.Lock()
	d.reqs, d.ok = append(d.reqs, r), append(d.ok, ok)
	d.mu.Unlock()
	return nil, &net.OpError{Op: "dial", Net: network, Err: socks.ErrNotAllowed}
}

// TestRequestInDialerContext: the Dialer learns which client and which
// authenticated user a CONNECT serves; a SOCKS4 USERID counts only when
// the server admitted it by name.
func TestRequestInDialerContext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		hello func(t testing.TB, c net.Conn)
		req   []byte
		user  string
	}{
		{"socks5 no auth", Config{}, noAuth, req5(1, mustAP("192.0.2.1:80")), ""},
		{"socks5 user", Config{Users: map[string]string{"alice": "pw"}}, func(t testing.TB, c net.Conn) {
			send(t, c, []byte{5, 1, 2})
			expect(t, c, []byte{5, 2})
			send(t, c, []byte{1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'})
			expect(t, c, []byte{1, 0})
		}, req5Name(1, "example.com", 443), "alice"},
		{"socks4 userid unchecked", Config{}, func(testing.TB, net.Conn) {}, req4(1, mustAP("192.0.2.1:80"), "mallory", ""), ""},
		{"socks4 userid admitted", Config{Users: map[string]string{"bob": "pw"}, Socks4UserMustMatch: true}, func(testing.TB, net.Conn) {}, req4(1, mustAP("192.0.2.1:80"), "bob", ""), "bob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &requestDialer{}
			tc.cfg.Dialer = d
			tc.cfg.FailureCloseDelay = 10 * time.Millisecond
			srv := startServer(t, tc.cfg)
			c := dial(t, srv.addr)
			tc.hello(t, c)
			send(t, c, tc.req)
			buf := make([]byte, 2)
			if _, err := c.Read(buf); err != nil {
				t.Fatal(err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.reqs) != 1 || !d.ok[0] {
				t.Fatalf("Dialer calls %v (ctx carried a request: %v)", d.reqs, d.ok)
			}
			r := d.reqs[0]
			if r.User != tc.user || r.Client.String() != c.LocalAddr().String() || r.Command != socks.CmdConnect {
				t.Errorf("request %+v, want user %q from %s", r, tc.user, c.LocalAddr())
			}
		})
	}
}

// namePC is a NamePacketConn: it records where datagrams go and answers
// each from the name it was sent to.
type namePC struct {
	sent    chan net.Addr
	replies chan reply
	closed  chan struct{}
	once    sync.Once
}

type reply struct {
	b    []byte
	from net.Addr
}

func (p *namePC) SendsToNames() {}
func (p *namePC) WriteTo(b []byte, to net.Addr) (int, error) {
	p.sent <- to
	p.replies <- reply{append([]byte("re:"), b...), to}
	return len(b), nil
}
func (p *namePC) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case r := <-p.replies:
		return copy(b, r.b), r.from, nil
	case <-p.closed:
		return 0, nil, net.ErrClosed
	}
}
func (p *namePC) Close() error                     { p.once.Do(func() { close(p.closed) }); return nil }
func (p *namePC) LocalAddr() net.Addr              { return &net.UDPAddr{} }
func (p *namePC) SetDeadline(time.Time) error      { return nil }
func (p *namePC) SetReadDeadline(time.Time) error  { return nil }
func (p *namePC) SetWriteDeadline(time.Time) error { return nil }

// nameDialer's PacketListener hands out one namePC.
type nameDialer struct {
	requestDialer
	pc *namePC
}

func (d *nameDialer) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	return d.pc, nil
}

// TestUDPNamesPassedOn: with a NamePacketConn the server sends a domain
// destination on as a name, unresolved, and names a sender given by name
// in the reply header.
func TestUDPNamesPassedOn(t *testing.T) {
	pc := &namePC{sent: make(chan net.Addr, 4), replies: make(chan reply, 4), closed: make(chan struct{})}
	d := &nameDialer{pc: pc}
	srv := startServer(t, Config{Dialer: d, LookupNetIP: func(context.Context, string, string) ([]netip.Addr, error) {
		t.Error("the server resolved a name it should have passed on")
		return nil, errors.New("no lookups here")
	}})
	_, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	client := udpClient(t, "127.0.0.1")
	long := make([]byte, 250)
	for i := range long {
		long[i] = 'a'
	}
	for _, name := range []string{"example.com", string(long) + ".test"} {
		sendUDP(t, client, relayAt, 0, socks.Addr{Name: name, Port: 53}, "q")
		if to := testenv.Recv(t, pc.sent, "the datagram's destination"); to != (socks.Addr{Name: name, Port: 53}) {
			t.Fatalf("sent to %#v, want the name %s:53", to, name)
		}
		b := make([]byte, 65535)
		n, err := client.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		_, from, payload, err := socks.ParseUDP(b[:n])
		if err != nil || from.Name != name || string(payload) != "re:q" {
			t.Fatalf("reply %q from %v, %v; want re:q from %s", payload, from, err, name)
		}
	}
}
