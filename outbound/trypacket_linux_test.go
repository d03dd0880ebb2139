package outbound

import (
	"bytes"
	"context"
	"net"
	"testing"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
)

// A DIRECT UDP session can be read without waiting, for the router's
// parked flows: nothing waiting is ok false; a reply comes byte-exact
// from its sender's address (unmapped on the dual-stack socket).
func TestDirectUDPTryRecv(t *testing.T) {
	echo := testenv.UDPEcho(t)
	echoAP := echo.LocalAddr().(*net.UDPAddr).AddrPort()
	d := &Direct{Dialer: &direct.Dialer{}}
	pc, err := d.ListenPacket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	tr, ok := pc.(interface {
		TryRecv([]byte) (int, socks.Addr, bool, error)
	})
	if !ok {
		t.Fatal("DIRECT UDP session has no TryRecv")
	}
	b := make([]byte, 65535)
	if n, _, ok, err := tr.TryRecv(b); ok || err != nil || n != 0 {
		t.Fatalf("TryRecv with nothing waiting = %d, %v, %v", n, ok, err)
	}
	msg := make([]byte, 5000)
	for i := range msg {
		msg[i] = byte(i * 17)
	}
	if err := pc.Send(msg, socks.AddrFromAddrPort(echoAP)); err != nil {
		t.Fatal(err)
	}
	if err := pc.(interface{ WaitRead() error }).WaitRead(); err != nil {
		t.Fatal(err)
	}
	n, from, ok, err := tr.TryRecv(b)
	if !ok || err != nil || !bytes.Equal(b[:n], msg) || from != socks.AddrFromAddrPort(echoAP) {
		t.Fatalf("TryRecv = %d bytes from %v, %v, %v; want the %d bytes from %v", n, from, ok, err, len(msg), echoAP)
	}
	pc.Close()
	if _, _, _, err := tr.TryRecv(b); err == nil {
		t.Fatal("TryRecv after Close did not fail")
	}
}
