package testenv

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func TestNeedToolFindsSbin(t *testing.T) {
	// ip lives in /usr/sbin or /sbin on Debian, often outside a user's PATH.
	t.Setenv("PATH", "/nonexistent")
	if p := NeedTool(t, "ip", "iproute2"); p == "" {
		t.Fatal("no path")
	} else if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
}

func TestCI(t *testing.T) {
	t.Setenv("CI", "true")
	if !CI() {
		t.Fatal("CI=true not seen")
	}
	t.Setenv("CI", "")
	if CI() {
		t.Fatal("empty CI seen as CI")
	}
}

func TestBufferMax(t *testing.T) {
	b := &Buffer{Max: 4}
	for _, s := range []string{"abc", "de", "fgh"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	// "abc" and "de" are kept (4 bytes were not yet exceeded), "fgh" not.
	if got := b.String(); got != "abcde" {
		t.Fatalf("kept %q, want %q", got, "abcde")
	}
}

func TestTCPEchoHalfCloses(t *testing.T) {
	c, err := net.Dial("tcp", TCPEcho(t, "tcp", "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "ping")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c) // ends only if the echo half-closes after EOF
	if err != nil || string(got) != "ping" {
		t.Fatalf("read %q, %v; want %q and EOF", got, err, "ping")
	}
}

func TestDialer(t *testing.T) {
	boom := errors.New("boom")
	failing := &Dialer{Err: boom}
	if _, err := failing.DialContext(context.Background(), "tcp", "a:1"); err != boom {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	d := NewDialer(t, func(c net.Conn) { io.WriteString(c, "hello") })
	c, err := d.DialContext(context.Background(), "tcp", "b:2")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c) // EOF once Serve returned and closed its end
	c.Close()
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if got := append(failing.Dials(), d.Dials()...); len(got) != 2 || got[0] != "tcp a:1" || got[1] != "tcp b:2" {
		t.Fatalf("dials %q", got)
	}
	if _, err := (&Dialer{}).DialContext(context.Background(), "tcp", "c:3"); err == nil {
		t.Fatal("a Dialer with neither Err nor Serve dialed")
	}
}

func TestMustURL(t *testing.T) {
	if u := MustURL(t, "socks5://u@h:1"); u.Scheme != "socks5" || u.Host != "h:1" || u.User.Username() != "u" {
		t.Fatalf("got %#v", u)
	}
}
