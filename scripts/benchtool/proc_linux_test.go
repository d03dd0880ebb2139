package main

import (
	"os"
	"testing"
)

// TestRSSSplit: the anonymous and file-backed parts of this process's
// RSS are both there and add up to VmRSS (the test has no shared memory).
func TestRSSSplit(t *testing.T) {
	total, anon, file, err := rssSplit(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if anon <= 0 || file <= 0 || anon+file != total {
		t.Errorf("VmRSS %v, RssAnon %v, RssFile %v: want both parts positive, adding up", total, anon, file)
	}
	if v, err := rss(os.Getpid()); err != nil || v <= 0 {
		t.Errorf("rss: %v, %v", v, err)
	}
	if _, err := statusBytes(os.Getpid(), "VmRSS", "NoSuchKey"); err == nil {
		t.Error("statusBytes found a key /proc/PID/status does not have")
	}
}
