package socksclient

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// fakeUDPServer is a loopback SOCKS5 server for one UDP association whose
// relay side is scripted by the test: it answers the ASSOCIATE with
// 0.0.0.0:<relay port>, so the client must substitute the server's IP.
type fakeUDPServer struct {
	ln    net.Listener
	relay *net.UDPConn
	ctrl  chan net.Conn
}

func newFakeUDPServer(t *testing.T) *fakeUDPServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeUDPServer{ln: ln, relay: relay, ctrl: make(chan net.Conn, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		bound := socks.Addr{IP: netip.IPv4Unspecified(), Port: uint16(relay.LocalAddr().(*net.UDPAddr).Port)}
		req, ok := serve5(t, c, socks.Succeeded, bound)
		if ok && (req.Command != socks.CmdUDPAssociate || req.Addr != (socks.Addr{IP: netip.IPv4Unspecified()})) {
			t.Errorf("fake server: request %v %v, want UDP-ASSOCIATE 0.0.0.0:0", req.Command, req.Addr)
		}
		s.ctrl <- c
	}()
	t.Cleanup(func() {
		ln.Close()
		relay.Close()
		testenv.Recv(t, done, "the server's end")
		select {
		case c := <-s.ctrl:
			c.Close()
		default:
		}
	})
	return s
}

// recv reads one datagram at the relay and parses it.
func (s *fakeUDPServer) recv(t *testing.T) (frag byte, addr socks.Addr, payload []byte, from *net.UDPAddr) {
	t.Helper()
	b := make([]byte, 65535)
	s.relay.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := s.relay.ReadFromUDP(b)
	if err != nil {
		t.Fatalf("fake relay: %v", err)
	}
	frag, addr, payload, err = socks.ParseUDP(b[:n])
	if err != nil {
		t.Fatalf("fake relay: % x: %v", b[:n], err)
	}
	return frag, addr, payload, from
}

func TestUDPAssociate(t *testing.T) {
	s := newFakeUDPServer(t)
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	c.UDPFragmentSize = 10
	pc, err := c.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got, want := pc.RelayAddr().String(), s.relay.LocalAddr().String(); got != want {
		t.Errorf("relay address %s, want %s (0.0.0.0 replaced by the server's IP)", got, want)
	}

	// Outgoing, small: one unfragmented datagram with an IPv4 destination.
	if _, err := pc.WriteTo([]byte("tiny"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 7}); err != nil {
		t.Fatal(err)
	}
	frag, addr, payload, client := s.recv(t)
	if frag != 0 || addr.String() != "192.0.2.1:7" || string(payload) != "tiny" {
		t.Errorf("relay got frag %d to %v %q", frag, addr, payload)
	}

	// Outgoing, large, to a name: fragments 1, 2, 3|last, the name intact.
	big := []byte("0123456789abcdefghijKLMNO")
	if n, err := pc.WriteTo(big, socks.Addr{Name: "nonexistent.invalid", Port: 53}); err != nil || n != len(big) {
		t.Fatalf("WriteTo = %d, %v", n, err)
	}
	var r socks.Reassembler
	for i, want := range []byte{1, 2, 3 | socks.FragLast} {
		frag, addr, payload, _ := s.recv(t)
		if frag != want || addr.Name != "nonexistent.invalid" || addr.Port != 53 {
			t.Fatalf("fragment %d: frag 0x%02x to %v, want 0x%02x to nonexistent.invalid:53", i, frag, addr, want)
		}
		if full, _, ok := r.Add(frag, addr, payload); ok && !bytes.Equal(full, big) {
			t.Errorf("reassembled %q, want %q", full, big)
		}
	}

	// Incoming: a well-formed datagram from a socket other than the relay
	// never reaches the reader (the socket is connected to the relay).
	foreign, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	spoof, _ := socks.AppendUDPHeader(nil, 0, socks.Addr{IP: netip.MustParseAddr("198.51.100.2"), Port: 99})
	if _, err := foreign.WriteToUDP(append(spoof, "spoofed"...), client); err != nil {
		t.Fatal(err)
	}
	// A malformed datagram from the relay is dropped, a fragmented one is
	// reassembled, a name as source comes back as a socks.Addr.
	s.relay.WriteToUDP([]byte{1, 0, 0, 1, 1, 2, 3, 4, 0, 9, 'x'}, client)
	src := socks.Addr{IP: netip.MustParseAddr("198.51.100.2"), Port: 99}
	dgrams, err := socks.Fragment(src, []byte("reassembled reply"), 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dgrams {
		s.relay.WriteToUDP(d, client)
	}
	named, _ := socks.AppendUDPHeader(nil, 0, socks.Addr{Name: "sender.invalid", Port: 5353})
	s.relay.WriteToUDP(append(named, "by name"...), client)

	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "reassembled reply" {
		t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
	}
	if ua, ok := from.(*net.UDPAddr); !ok || ua.String() != "198.51.100.2:99" {
		t.Errorf("sender %#v, want *net.UDPAddr 198.51.100.2:99", from)
	}
	n, from, err = pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "by name" {
		t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
	}
	if da, ok := from.(socks.Addr); !ok || da.String() != "sender.invalid:5353" {
		t.Errorf("sender %#v, want socks.Addr sender.invalid:5353", from)
	}

	// The server ends the association: a blocked read fails with net.ErrClosed.
	pc.SetReadDeadline(time.Time{})
	readErr := make(chan error, 1)
	go func() {
		_, _, err := pc.ReadFrom(buf)
		readErr <- err
	}()
	(<-s.ctrl).Close()
	err = testenv.Recv(t, readErr, "the blocked read's end")
	if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "association ended") {
		t.Errorf("read after the control connection closed: %v, want net.ErrClosed and 'association ended'", err)
	}
	if _, err := pc.WriteTo([]byte("late"), socks.Addr{Name: "x.invalid", Port: 1}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after the control connection closed: %v, want net.ErrClosed", err)
	}
	if err := pc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestUDPCloseUnblocksRead(t *testing.T) {
	s := newFakeUDPServer(t)
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	pc, err := c.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, _, err := pc.ReadFrom(make([]byte, 10))
		readErr <- err
	}()
	ctrl := testenv.Recv(t, s.ctrl, "the control connection")
	defer ctrl.Close()
	pc.Close()
	if err := testenv.Recv(t, readErr, "the blocked read's end"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v, want net.ErrClosed", err)
	}
	// The server sees the control connection end.
	ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ctrl.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("control connection after Close: %v, want EOF", err)
	}
	if err := pc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
}

func TestUDPWriteToBadAddress(t *testing.T) {
	s := newFakeUDPServer(t)
	c, _ := Parse("socks5://"+s.ln.Addr().String(), nil)
	pc, err := c.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, a := range []net.Addr{nil, (*net.UDPAddr)(nil), &net.UDPAddr{}, socks.Addr{Port: 1}, (*socks.Addr)(nil), socks.Addr{Name: strings.Repeat("a", 256), Port: 1}} {
		if _, err := pc.WriteTo([]byte("x"), a); err == nil {
			t.Errorf("WriteTo(%#v) succeeded", a)
		}
	}
}

func TestUDPUnsupported(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		serve5(t, c, socks.CommandNotSupported, socks.Addr{})
	})
	c, _ := Parse("socks5://p", d)
	_, err := c.ListenPacket(context.Background())
	var re *socks.ReplyError
	if !errors.Is(err, ErrUDPUnsupported) || !errors.As(err, &re) || re.Code != socks.CommandNotSupported {
		t.Errorf("reply 0x07: err = %v, want ErrUDPUnsupported and the ReplyError", err)
	}
	c4, _ := Parse("socks4a://p", d)
	if _, err := c4.ListenPacket(context.Background()); !errors.Is(err, ErrUDPUnsupported) || !strings.Contains(err.Error(), "SOCKS4") {
		t.Errorf("socks4a: err = %v, want ErrUDPUnsupported naming SOCKS4", err)
	}
}

func TestBind5(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		req, ok := serve5(t, c, socks.Succeeded, socks.Addr{IP: netip.IPv4Unspecified(), Port: 5555})
		if !ok {
			return
		}
		if req.Command != socks.CmdBind || req.Addr.String() != "peer.invalid:21" {
			t.Errorf("fake server: %v %v, want BIND peer.invalid:21", req.Command, req.Addr)
		}
		b, _ := socks.AppendReply(nil, socks.Succeeded, socks.Addr{IP: netip.MustParseAddr("192.0.2.9"), Port: 4242})
		if send(t, c, b...) {
			echo(c)
		}
	})
	c, _ := Parse("socks5://127.0.0.1:1080", d)
	ln, err := c.Bind(context.Background(), "peer.invalid:21")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || ta.String() != "127.0.0.1:5555" {
		t.Errorf("Addr = %#v, want *net.TCPAddr 127.0.0.1:5555 (server IP for 0.0.0.0)", ln.Addr())
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if conn.RemoteAddr().String() != "192.0.2.9:4242" {
		t.Errorf("RemoteAddr = %v, want the peer 192.0.2.9:4242", conn.RemoteAddr())
	}
	roundTrip(t, conn, "bound")
	if _, ok := conn.(interface{ CloseWrite() error }); !ok {
		t.Error("accepted conn has no CloseWrite")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Accept: %v, want net.ErrClosed", err)
	}
	ln.Close() // must not close the accepted conn
	roundTrip(t, conn, "still open")
	conn.Close()
}

func TestBind4(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if !expect(t, c, "request", []byte{4, 2, 0, 21, 192, 0, 2, 9, 'u', 0}) {
			return
		}
		if send(t, c, 0, 0x5a, 0x15, 0xb3, 10, 1, 2, 3) && send(t, c, 0, 0x5a, 0x10, 0x92, 192, 0, 2, 9) {
			echo(c)
		}
	})
	c, _ := Parse("socks4://u@127.0.0.1", d)
	ln, err := c.Bind(context.Background(), "192.0.2.9:21")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != "10.1.2.3:5555" {
		t.Errorf("Addr = %v, want 10.1.2.3:5555", ln.Addr())
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.RemoteAddr().String() != "192.0.2.9:4242" {
		t.Errorf("RemoteAddr = %v", conn.RemoteAddr())
	}
	roundTrip(t, conn, "socks4 bind")
}

func TestBindSecondReplyRefused(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if _, ok := serve5(t, c, socks.Succeeded, socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}); ok {
			send(t, c, 5, byte(socks.NotAllowed), 0, 1, 0, 0, 0, 0, 0, 0)
		}
	})
	c, _ := Parse("socks5://p", d)
	ln, err := c.Bind(context.Background(), "192.0.2.9:21")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = ln.Accept()
	var re *socks.ReplyError
	if !errors.As(err, &re) || re.Code != socks.NotAllowed {
		t.Errorf("Accept: %v, want ReplyError 0x02", err)
	}
}

func TestBindCloseAndCancelAbortAccept(t *testing.T) {
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if _, ok := serve5(t, c, socks.Succeeded, socks.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1}); ok {
			c.Read(make([]byte, 1)) // no second reply; wait for the hang-up
		}
	})
	c, _ := Parse("socks5://p", d)

	ln, err := c.Bind(context.Background(), "192.0.2.9:21")
	if err != nil {
		t.Fatal(err)
	}
	acceptErr := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		acceptErr <- err
	}()
	// Close may come before or during Accept; either way Accept ends with
	// net.ErrClosed.
	ln.Close()
	if err := testenv.Recv(t, acceptErr, "the blocked accept's end"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}

	ln, err = c.Bind(context.Background(), "192.0.2.9:21")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if _, err := ln.AcceptContext(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("AcceptContext after cancel: %v, want context.Canceled", err)
	}
}
