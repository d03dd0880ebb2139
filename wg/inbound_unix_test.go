//go:build unix

package wg

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
)

func TestInboundPortInUse(t *testing.T) {
	srv := newServer(t)
	key, _ := NewPrivateKey()
	_, err := Start(context.Background(), Config{
		Listen:       netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.in.Port()),
		ListenPacket: loopbackListen, PrivateKey: key,
	})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a port in use: %v, want EADDRINUSE", err)
	}
}
