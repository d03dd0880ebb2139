package socksserver

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenAcceptedKeepAlive: a connection Listen accepts has the
// keep-alive a plain net.ListenConfig gives it (Go sets it on each accepted
// socket; Listen sets it once on the listening socket, which Linux copies).
func TestListenAcceptedKeepAlive(t *testing.T) {
	ln, err := Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rc, err := a.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name       string
		level, opt int
		v          int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
	}
	rc.Control(func(fd uintptr) {
		for _, w := range want {
			v, err := unix.GetsockoptInt(int(fd), w.level, w.opt)
			if err != nil {
				t.Errorf("%s: %v", w.name, err)
			} else if v != w.v {
				t.Errorf("accepted socket's %s = %d, want %d", w.name, v, w.v)
			}
		}
	})
}
