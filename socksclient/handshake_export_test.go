package socksclient

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/tunsocks/tunsocks/socks"
)

// Handshake reports BND.ADDR as the server sent it, where ListenPacket
// would replace 0.0.0.0 with the server's address, and returns refusals as
// *socks.ReplyError with the connection left to the caller.
func TestHandshakeRawBound(t *testing.T) {
	zero := socks.Addr{IP: netip.IPv4Unspecified(), Port: 4321}
	d := newFake(t, func(t *testing.T, c net.Conn) {
		if _, ok := serve5(t, c, socks.Succeeded, zero); ok {
			send(t, c, 'x') // the target's first byte, right behind the reply
			echo(c)
		}
	})
	cl, _ := Parse("socks5://proxy.example:1080", d)
	raw, _ := d.DialContext(context.Background(), "tcp", cl.Server())
	conn, bound, err := cl.Handshake(context.Background(), raw, socks.CmdUDPAssociate, socks.Addr{IP: netip.IPv4Unspecified()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if bound != zero {
		t.Errorf("bound %v, want %v as sent", bound, zero)
	}
	b := make([]byte, 1)
	if _, err := conn.Read(b); err != nil || b[0] != 'x' {
		t.Errorf("byte behind the reply: %q, %v", b, err)
	}

	refuse := newFake(t, func(t *testing.T, c net.Conn) { serve5(t, c, socks.ConnectionRefused, socks.Addr{}) })
	cl, _ = Parse("socks5://proxy.example:1080", refuse)
	raw, _ = refuse.DialContext(context.Background(), "tcp", cl.Server())
	defer raw.Close()
	_, _, err = cl.Handshake(context.Background(), raw, socks.CmdConnect, socks.Addr{Name: "example.com", Port: 80})
	var re *socks.ReplyError
	var oe *net.OpError
	if !errors.As(err, &re) || re.Code != socks.ConnectionRefused || !errors.As(err, &oe) {
		t.Errorf("refusal: %v, want a *net.OpError with a *socks.ReplyError 0x05", err)
	}
}
