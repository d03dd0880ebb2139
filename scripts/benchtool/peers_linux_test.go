package main

import (
	"os"
	"testing"
)

func TestParsePeer(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]path{"tun2socks=" + exe: t2sPath, "hev=" + exe: hevPath,
		"hev-socks5-tunnel=" + exe: hevPath, "sing-box=" + exe: singboxPath} {
		if p, bin, err := parsePeer(in); err != nil || p != want || bin != exe {
			t.Errorf("parsePeer(%q) = %v, %q, %v; want %v", in, p, bin, err, want)
		}
	}
	for _, bad := range []string{"tun2socks", "clash=" + exe, "hev=", "hev=/nonexistent/hev", "hev=" + t.TempDir()} {
		if _, _, err := parsePeer(bad); err == nil {
			t.Errorf("parsePeer(%q): want an error", bad)
		}
	}
}
