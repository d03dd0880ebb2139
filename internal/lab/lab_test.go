//go:build linux

package lab

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestLabTopology(t *testing.T) {
	testenv.NeedRoot(t, "network namespaces")
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// The remote host listens; the proxy host reaches it; the app host does not.
	var ln net.Listener
	if err := l.Do(l.Remote, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(Remote4.Addr(), 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	if err := l.Do(l.Proxy, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 2)
		_, err = c.Read(b)
		return err
	}); err != nil {
		t.Fatalf("proxy host cannot reach the remote host: %v", err)
	}
	err = l.Do(l.App, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("app host dialing the remote host: %v, want network unreachable", err)
	}
	// IPv6 between app and proxy works at once (no DAD wait).
	if err := l.Do(l.Proxy, func() (err error) {
		ln6, err := net.Listen("tcp", "["+ProxyDown6.Addr().String()+"]:0")
		if err != nil {
			return err
		}
		defer ln6.Close()
		go func() {
			if c, err := ln6.Accept(); err == nil {
				c.Close()
			}
		}()
		return l.Do(l.App, func() error {
			c, err := net.DialTimeout("tcp", ln6.Addr().String(), 5*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}); err != nil {
		t.Fatalf("IPv6 app->proxy: %v", err)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{l.App, l.Proxy, l.Remote} {
		if netns.Exists(ns) {
			t.Errorf("namespace %s survived Close", ns)
		}
	}
}

func TestCleanupStale(t *testing.T) {
	testenv.NeedRoot(t, "network namespaces")
	// A namespace named for a pid that cannot exist.
	name := Prefix + "999999999-1-app"
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(name)
	removed, err := CleanupStale()
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != name || netns.Exists(name) {
		t.Fatalf("CleanupStale removed %v; %s exists=%v", removed, name, netns.Exists(name))
	}
}
