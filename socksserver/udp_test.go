package socksserver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// associate opens a UDP association for req and returns the control
// connection and the relay address from the reply.
func associate(t *testing.T, srv *testServer, req netip.AddrPort) (*net.TCPConn, netip.AddrPort) {
	t.Helper()
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(3, req))
	rep, relayAt := readReply5(t, c)
	if rep != 0 {
		t.Fatalf("UDP ASSOCIATE reply %v", socks.Reply(rep))
	}
	if relayAt.Addr() != netip.MustParseAddr("127.0.0.1") || relayAt.Port() == 0 {
		t.Fatalf("UDP ASSOCIATE reply names %v, want 127.0.0.1 and a port", relayAt)
	}
	return c, relayAt
}

func udpClient(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { pc.Close() })
	return pc
}

// sendUDP sends one datagram with FRAG frag for dst to the relay.
func sendUDP(t *testing.T, pc *net.UDPConn, relayAt netip.AddrPort, frag byte, dst socks.Addr, payload string) {
	t.Helper()
	d, err := socks.AppendUDPHeader(nil, frag, dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.WriteToUDPAddrPort(append(d, payload...), relayAt); err != nil {
		t.Fatal(err)
	}
}

// recvUDP reads the next datagram from the relay and checks its sender.
func recvUDP(t *testing.T, pc *net.UDPConn, relayAt, from netip.AddrPort) string {
	t.Helper()
	b := make([]byte, 65535)
	n, src, err := pc.ReadFromUDPAddrPort(b)
	if err != nil {
		t.Fatalf("read from relay: %v", err)
	}
	if netip.AddrPortFrom(src.Addr().Unmap(), src.Port()) != relayAt {
		t.Fatalf("datagram from %v, want the relay %v", src, relayAt)
	}
	frag, addr, payload, err := socks.ParseUDP(b[:n])
	if err != nil || frag != 0 {
		t.Fatalf("relay datagram %x: frag %d, %v", b[:n], frag, err)
	}
	if got, _ := addr.AddrPort(); got != from {
		t.Fatalf("relay datagram names sender %v, want %v", addr, from)
	}
	return string(payload)
}

func echoAddr(t *testing.T) netip.AddrPort {
	return testenv.UDPEcho(t).LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestUDPEcho(t *testing.T) {
	echo := echoAddr(t)
	srv := startServer(t, Config{})
	ctl, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")
	for _, msg := range []string{"ping", "", "pong"} {
		sendUDP(t, pc, relayAt, 0, socks.AddrFromAddrPort(echo), msg)
		if got := recvUDP(t, pc, relayAt, echo); got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	ctl.Close()
	r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["command"] == "UDP-ASSOCIATE" })
	if r["up"] != float64(8) || r["down"] != float64(8) || r["reply"] != "succeeded" {
		t.Errorf("log record %v", r)
	}
}

func TestUDPDomain(t *testing.T) {
	echo := echoAddr(t)
	srv := startServer(t, Config{})
	_, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")
	sendUDP(t, pc, relayAt, 0, socks.Addr{Name: "localhost", Port: echo.Port()}, "by name")
	if got := recvUDP(t, pc, relayAt, echo); got != "by name" {
		t.Fatalf("echo %q", got)
	}
}

func TestUDPFragments(t *testing.T) {
	echo := echoAddr(t)
	dst := socks.AddrFromAddrPort(echo)
	srv := startServer(t, Config{})
	_, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")

	t.Run("in order", func(t *testing.T) {
		sendUDP(t, pc, relayAt, 1, dst, "AAA")
		sendUDP(t, pc, relayAt, 2, dst, "BBB")
		sendUDP(t, pc, relayAt, 3|socks.FragLast, dst, "CCC")
		if got := recvUDP(t, pc, relayAt, echo); got != "AAABBBCCC" {
			t.Fatalf("reassembled %q, want AAABBBCCC", got)
		}
	})
	t.Run("gap resets the queue", func(t *testing.T) {
		sendUDP(t, pc, relayAt, 1, dst, "A")
		sendUDP(t, pc, relayAt, 3, dst, "C") // 2 is missing: dropped
		sendUDP(t, pc, relayAt, 2|socks.FragLast, dst, "B")
		sendUDP(t, pc, relayAt, 0, dst, "whole")
		if got := recvUDP(t, pc, relayAt, echo); got != "whole" {
			t.Fatalf("first datagram %q, want the unfragmented one", got)
		}
	})
	t.Run("restart resets the queue", func(t *testing.T) {
		sendUDP(t, pc, relayAt, 1, dst, "x")
		sendUDP(t, pc, relayAt, 2, dst, "y")
		sendUDP(t, pc, relayAt, 1, dst, "p") // not above the highest: a new queue
		sendUDP(t, pc, relayAt, 2|socks.FragLast, dst, "q")
		if got := recvUDP(t, pc, relayAt, echo); got != "pq" {
			t.Fatalf("reassembled %q, want pq", got)
		}
	})
}

func TestUDPForeignSourceDropped(t *testing.T) {
	echo := echoAddr(t)
	dst := socks.AddrFromAddrPort(echo)

	t.Run("locks onto the first datagram's port", func(t *testing.T) {
		srv := startServer(t, Config{})
		ctl, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
		a, b := udpClient(t, "127.0.0.1"), udpClient(t, "127.0.0.1")
		other := udpClient(t, "127.0.0.2") // not the client's IP: never locks
		sendUDP(t, other, relayAt, 0, dst, "other host")
		sendUDP(t, a, relayAt, 0, dst, "first")
		if got := recvUDP(t, a, relayAt, echo); got != "first" {
			t.Fatalf("got %q", got)
		}
		sendUDP(t, b, relayAt, 0, dst, "foreign port")
		sendUDP(t, a, relayAt, 0, dst, "second")
		// Replies go to a's port, so a relayed foreign datagram would
		// arrive here first.
		if got := recvUDP(t, a, relayAt, echo); got != "second" {
			t.Fatalf("got %q, want second: a foreign datagram was relayed", got)
		}
		ctl.Close()
		r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["command"] == "UDP-ASSOCIATE" })
		if r["dropped_foreign"] != float64(2) {
			t.Errorf("dropped_foreign = %v, want 2", r["dropped_foreign"])
		}
	})
	t.Run("port named in the request", func(t *testing.T) {
		srv := startServer(t, Config{})
		a, b := udpClient(t, "127.0.0.1"), udpClient(t, "127.0.0.1")
		_, relayAt := associate(t, srv, a.LocalAddr().(*net.UDPAddr).AddrPort())
		sendUDP(t, b, relayAt, 0, dst, "foreign port")
		sendUDP(t, a, relayAt, 0, dst, "mine")
		if got := recvUDP(t, a, relayAt, echo); got != "mine" {
			t.Fatalf("got %q, want mine: a foreign datagram was relayed", got)
		}
	})
}

func TestUDPDeniedDestinationDropped(t *testing.T) {
	denied, allowed := echoAddr(t), echoAddr(t)
	srv := startServer(t, Config{DenyPorts: []PortRange{{Lo: denied.Port(), Hi: denied.Port()}}})
	_, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")
	sendUDP(t, pc, relayAt, 0, socks.AddrFromAddrPort(denied), "no")
	sendUDP(t, pc, relayAt, 0, socks.AddrFromAddrPort(allowed), "yes")
	if got := recvUDP(t, pc, relayAt, allowed); got != "yes" {
		t.Fatalf("got %q", got)
	}
}

// TestUDPEndsWithControl: closing the control connection ends the
// association and closes its relay socket.
func TestUDPEndsWithControl(t *testing.T) {
	echo := echoAddr(t)
	srv := startServer(t, Config{})
	ctl, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")
	sendUDP(t, pc, relayAt, 0, socks.AddrFromAddrPort(echo), "alive")
	recvUDP(t, pc, relayAt, echo)

	ctl.Close()
	waitIdle(t, srv.Server)
	// The relay port is closed: a connected socket hears ICMP port
	// unreachable as ECONNREFUSED.
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relayAt))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(ioTimeout))
	uc.Write([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 7, 'x'})
	if _, err := uc.Read(make([]byte, 64)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("relay socket after the control connection closed: read %v, want ECONNREFUSED", err)
	}
}

// TestUDPIdle: an idle association ends and its control connection is
// closed by the server.
func TestUDPIdle(t *testing.T) {
	srv := startServer(t, Config{UDPIdleTimeout: 100 * time.Millisecond})
	ctl, _ := associate(t, srv, mustAP("0.0.0.0:0"))
	expectClosed(t, ctl)
	r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["command"] == "UDP-ASSOCIATE" })
	if r["end"] != "idle" {
		t.Errorf("log record %v", r)
	}
}

// TestSOCKS4HasNoUDP: SOCKS4 has no UDP ASSOCIATE; command 3 is refused.
func TestSOCKS4HasNoUDP(t *testing.T) {
	srv := startServer(t, Config{})
	c := dial(t, srv.addr)
	send(t, c, req4(3, mustAP("0.0.0.0:0"), "", ""))
	expect(t, c, fail4)
	expectClosed(t, c)
}

type countingPacketListener struct{ n atomic.Int64 }

func (l *countingPacketListener) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	l.n.Add(1)
	return (&net.ListenConfig{}).ListenPacket(ctx, network, address)
}

// TestUDPClientPacketListener: the client-facing socket comes from
// Config.ClientPacketListener, the outbound one from the Dialer's
// PacketListener capability.
func TestUDPClientPacketListener(t *testing.T) {
	echo := echoAddr(t)
	clientL, outL := &countingPacketListener{}, &countingPacketListener{}
	dialer := struct {
		Dialer
		PacketListener
	}{&net.Dialer{}, outL}
	srv := startServer(t, Config{Dialer: dialer, ClientPacketListener: clientL})
	_, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	pc := udpClient(t, "127.0.0.1")
	sendUDP(t, pc, relayAt, 0, socks.AddrFromAddrPort(echo), "via listeners")
	if got := recvUDP(t, pc, relayAt, echo); got != "via listeners" {
		t.Fatalf("got %q", got)
	}
	if clientL.n.Load() != 1 || outL.n.Load() != 1 {
		t.Errorf("ClientPacketListener used %d times, the Dialer's PacketListener %d times; want 1 and 1", clientL.n.Load(), outL.n.Load())
	}
}
