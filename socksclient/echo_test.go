package socksclient

// End-to-end checks shared by the tests against
// real servers (Dante, microsocks, our socksserver).

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// checkConnect dials the echo through c and checks data both ways and, with
// halfClose, that the server passes a half-close on (microsocks does not: it
// closes both ways when one side ends).
func checkConnect(t *testing.T, c *Client, target string, halfClose bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", target)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := bytes.Repeat([]byte("interop "), 4096)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(msg)
		if err == nil && halfClose {
			err = conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	var got []byte
	if halfClose {
		got, err = io.ReadAll(conn)
	} else {
		got = make([]byte, len(msg))
		_, err = io.ReadFull(conn, got)
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := testenv.Recv(t, errc, "the writer's end"); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want %d", len(got), len(msg))
	}
}

// checkUDP sends datagrams through c to the echo and checks each comes back
// from the echo's address. UDP may drop, so each is retried a few times.
func checkUDP(t *testing.T, c *Client, echo *net.UDPConn, sizes ...int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := c.ListenPacket(ctx)
	if err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	defer pc.Close()
	to := echo.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 65535)
	for i, size := range sizes {
		msg := make([]byte, size)
		rand.Read(msg)
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			if _, err := pc.WriteTo(msg, to); err != nil {
				t.Fatalf("datagram %d: WriteTo: %v", i, err)
			}
			pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			for { // skip stale echoes of earlier tries
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				if from.String() != to.String() {
					t.Fatalf("datagram %d came from %v, want %v", i, from, to)
				}
				if bytes.Equal(buf[:n], msg) {
					ok = true
					break
				}
			}
		}
		if !ok {
			t.Fatalf("datagram %d (%d bytes) never came back", i, size)
		}
	}
}

// checkBind asks the server to accept a connection from a loopback peer,
// connects as that peer and checks both directions.
func checkBind(t *testing.T, c *Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := c.Bind(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("BIND: %v", err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("peer dial %v: %v", ln.Addr(), err)
	}
	defer peer.Close()
	conn, err := ln.AcceptContext(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	defer conn.Close()
	if conn.RemoteAddr().String() != peer.LocalAddr().String() {
		t.Errorf("accepted RemoteAddr %v, want the peer %v", conn.RemoteAddr(), peer.LocalAddr())
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := peer.Write([]byte("from peer")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 9)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "from peer" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if _, err := conn.Write([]byte("to peer")); err != nil {
		t.Fatal(err)
	}
	got = got[:7]
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "to peer" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// benchConnect measures one CONNECT and one echoed byte through the SOCKS5
// server at proxy to a loopback echo.
func benchConnect(b *testing.B, proxy string) {
	echoAddr := testenv.TCPEcho(b, "tcp", "127.0.0.1:0")
	c, err := Parse("socks5://"+proxy, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	one := []byte{1}
	b.ReportAllocs()
	for b.Loop() {
		conn, err := c.DialContext(ctx, "tcp", echoAddr)
		if err != nil {
			b.Fatal(err)
		}
		conn.Write(one)
		if _, err := io.ReadFull(conn, one); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}
