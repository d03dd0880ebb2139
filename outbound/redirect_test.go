package outbound

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

func TestRedirect(t *testing.T) {
	from := netip.MustParseAddr("169.254.1.2")
	r := &Redirect{Label: "HOST-LOOPBACK", From: from, To: netip.MustParseAddr("127.0.0.1"), Dialer: &direct.Dialer{}}
	addr := testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	_, port, _ := net.SplitHostPort(addr)

	c, err := r.DialContext(t.Context(), "tcp", net.JoinHostPort(from.String(), port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("through the redirect: %q %v", buf, err)
	}
	if _, err := r.DialContext(t.Context(), "tcp", "192.0.2.1:"+port); err == nil {
		t.Error("a flow to another address was carried")
	}

	echo := testenv.UDPEcho(t)
	uport := echo.LocalAddr().(*net.UDPAddr).Port
	pc, err := r.ListenPacket(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := pc.Send([]byte("hello"), socks.Addr{IP: from, Port: uint16(uport)}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	n, src, err := pc.Recv(b)
	if err != nil || string(b[:n]) != "hello" || src != (socks.Addr{IP: from, Port: uint16(uport)}) {
		t.Errorf("UDP reply %q from %v (%v), want hello from %v:%d", b[:n], src, err, from, uport)
	}
	if err := pc.Send([]byte("x"), socks.Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}); err == nil {
		t.Error("a datagram to another address was sent")
	}
}
