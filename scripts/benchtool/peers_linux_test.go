package main

import (
	"os"
	"slices"
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

func TestTagOutputs(t *testing.T) {
	args := []string{"--cpuprofile", "/tmp/run.prof", "--trace=/tmp/run.trace", "-log-level", "debug", "-cpuprofile=x"}
	got := tagOutputs(args, "rtt-microsocks-tunsocks-2")
	want := []string{"--cpuprofile", "/tmp/run.prof.rtt-microsocks-tunsocks-2", "--trace=/tmp/run.trace.rtt-microsocks-tunsocks-2",
		"-log-level", "debug", "-cpuprofile=x.rtt-microsocks-tunsocks-2"}
	if !slices.Equal(got, want) {
		t.Errorf("tagOutputs = %q, want %q", got, want)
	}
	if args[1] != "/tmp/run.prof" {
		t.Errorf("tagOutputs changed its argument: %q", args)
	}
	if got := tagOutputs(args, ""); !slices.Equal(got, args) {
		t.Errorf("tagOutputs without a tag = %q, want the arguments as they are", got)
	}
}
