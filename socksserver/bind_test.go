package socksserver

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/socks"
)

// bindFirst sends a BIND request and returns the address from the first
// reply, which must be a success on the control connection's local IP.
func bindFirst(t *testing.T, c net.Conn, v4 bool, request []byte) netip.AddrPort {
	t.Helper()
	send(t, c, request)
	var rep byte
	var at netip.AddrPort
	if v4 {
		rep, at = readReply4(t, c)
		if rep != 0x5A {
			t.Fatalf("first SOCKS4 BIND reply 0x%02x", rep)
		}
	} else {
		rep, at = readReply5(t, c)
		if rep != 0 {
			t.Fatalf("first BIND reply %v", socks.Reply(rep))
		}
	}
	if at.Addr() != netip.MustParseAddr("127.0.0.1") || at.Port() == 0 {
		t.Fatalf("first BIND reply names %v, want 127.0.0.1 and the listener's port", at)
	}
	return at
}

func TestBind(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v4      bool
		request []byte
	}{
		{"SOCKS5 any peer", false, req5(2, mustAP("0.0.0.0:0"))},
		{"SOCKS5 expected IP", false, req5(2, mustAP("127.0.0.1:0"))},
		{"SOCKS5 expected domain", false, req5Name(2, "localhost", 0)},
		{"SOCKS4 expected IP", true, req4(2, mustAP("127.0.0.1:0"), "", "")},
		{"SOCKS4a expected domain", true, req4(2, mustAP("0.0.0.0:0"), "", "localhost")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, Config{})
			c := dial(t, srv.addr)
			if !tc.v4 {
				noAuth(t, c)
			}
			at := bindFirst(t, c, tc.v4, tc.request)

			peer := dial(t, at.String())
			var rep byte
			var from netip.AddrPort
			if tc.v4 {
				rep, from = readReply4(t, c)
				rep ^= 0x5A
			} else {
				rep, from = readReply5(t, c)
			}
			if rep != 0 {
				t.Fatalf("second BIND reply failed (0x%02x)", rep)
			}
			if want := peer.LocalAddr().(*net.TCPAddr).AddrPort(); from != want {
				t.Errorf("second reply names %v, the peer is %v", from, want)
			}
			// Both ways, and half-close passed on.
			send(t, peer, []byte("from peer"))
			expect(t, c, []byte("from peer"))
			send(t, c, []byte("from client"))
			c.CloseWrite()
			got, err := io.ReadAll(peer)
			if err != nil || string(got) != "from client" {
				t.Fatalf("peer read %q, %v", got, err)
			}
			peer.Close()
			expectClosed(t, c)
		})
	}
}

func TestBindWrongPeer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v4      bool
		request []byte
		want    []byte
	}{
		{"SOCKS5", false, req5(2, mustAP("127.0.0.2:0")), fail5(socks.NotAllowed)},
		{"SOCKS5 domain", false, req5Name(2, "nothere.test", 0), fail5(socks.NotAllowed)},
		{"SOCKS4", true, req4(2, mustAP("127.0.0.2:0"), "", ""), fail4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, Config{LookupNetIP: func(ctx context.Context, network, host string) ([]netip.Addr, error) {
				return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
			}})
			c := dial(t, srv.addr)
			if !tc.v4 {
				noAuth(t, c)
			}
			at := bindFirst(t, c, tc.v4, tc.request)
			peer := dial(t, at.String()) // from 127.0.0.1
			expect(t, c, tc.want)
			expectClosed(t, c)
			expectClosed(t, peer)
		})
	}
}

// bindRecorder is a Dialer whose BIND listeners report their Close.
type bindRecorder struct {
	net.Dialer
	closed chan struct{}
}

func (d *bindRecorder) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &notifyListener{Listener: ln, closed: d.closed}, nil
}

type notifyListener struct {
	net.Listener
	closed chan struct{}
	once   sync.Once
}

func (l *notifyListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func TestBindTimeout(t *testing.T) {
	for _, v4 := range []bool{false, true} {
		rec := &bindRecorder{closed: make(chan struct{})}
		srv := startServer(t, Config{BindTimeout: 100 * time.Millisecond, Dialer: rec})
		c := dial(t, srv.addr)
		req, want := req5(2, mustAP("0.0.0.0:0")), fail5(socks.HostUnreachable)
		if v4 {
			req, want = req4(2, mustAP("0.0.0.0:0"), "", ""), fail4
		} else {
			noAuth(t, c)
		}
		at := bindFirst(t, c, v4, req)
		expect(t, c, want)
		expectClosed(t, c)
		// The listener is gone. (Dialing its port to check is not proof:
		// with tests of other packages running, another listener may take
		// the freed port at once.)
		select {
		case <-rec.closed:
		case <-time.After(ioTimeout):
			t.Errorf("the BIND listener at %v was not closed after the timeout", at)
		}
	}
}

// TestBindClientLeaves: a client that closes while waiting for the peer
// ends the BIND at once (the listener closes) rather than at the timer.
func TestBindClientLeaves(t *testing.T) {
	rec := &bindRecorder{closed: make(chan struct{})}
	srv := startServer(t, Config{BindTimeout: time.Hour, Dialer: rec})
	c := dial(t, srv.addr)
	noAuth(t, c)
	at := bindFirst(t, c, false, req5(2, mustAP("0.0.0.0:0")))
	c.Close()
	select {
	case <-rec.closed:
	case <-time.After(ioTimeout):
		t.Errorf("the BIND listener at %v still open after the client left", at)
	}
	waitIdle(t, srv.Server)
}

// TestBindClientSpeaksWithRequest: bytes sent with the BIND request break
// the protocol (nothing may be sent before the second reply) even though the
// handshake reader has already taken them in.
func TestBindClientSpeaksWithRequest(t *testing.T) {
	rec := &bindRecorder{closed: make(chan struct{})}
	srv := startServer(t, Config{BindTimeout: time.Hour, Dialer: rec})
	c := dial(t, srv.addr)
	noAuth(t, c)
	at := bindFirst(t, c, false, append(req5(2, mustAP("0.0.0.0:0")), "too early"...))
	select {
	case <-rec.closed:
	case <-time.After(ioTimeout):
		t.Fatalf("the BIND listener at %v still open after the client spoke", at)
	}
	if rep, _ := readReply5(t, c); rep != byte(socks.GeneralFailure) {
		t.Errorf("second reply %v, want general failure", socks.Reply(rep))
	}
	c.Close()
	waitIdle(t, srv.Server)
}

// TestBindExternalAddr: the first reply names ExternalAddr when set.
func TestBindExternalAddr(t *testing.T) {
	ext := netip.MustParseAddr("203.0.113.9")
	srv := startServer(t, Config{ExternalAddr: ext, BindTimeout: 100 * time.Millisecond})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(2, mustAP("0.0.0.0:0")))
	rep, at := readReply5(t, c)
	if rep != 0 || at.Addr() != ext || at.Port() == 0 {
		t.Fatalf("first reply %d %v, want success naming %v", rep, at, ext)
	}
}
