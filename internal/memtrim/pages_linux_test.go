package memtrim

import (
	"os"
	"strings"
	"testing"
)

// rssAnon is this process's RssAnon in kB.
func rssAnon(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			var kb uint64
			for _, c := range strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) {
				kb = kb*10 + uint64(c-'0')
			}
			return kb
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}

// TestReleasePages: a written 8 MiB buffer leaves the resident set, reads
// as zeros, and works again once written.
func TestReleasePages(t *testing.T) {
	b := make([]byte, 100, 8<<20)
	full := b[:cap(b)]
	for i := range full {
		full[i] = 0xA5
	}
	before := rssAnon(t)
	n := ReleasePages(b)
	after := rssAnon(t)
	if n < 8<<20-2*os.Getpagesize() || n > 8<<20 {
		t.Errorf("ReleasePages covered %d bytes of an 8 MiB buffer", n)
	}
	if before-after < 7<<10 {
		t.Errorf("RssAnon %d kB -> %d kB: want about 8 MiB less", before, after)
	}
	// Pages released read as zeros; a partial page at either end keeps
	// its bytes.
	if full[len(full)/2] != 0 || full[len(full)-1-os.Getpagesize()] != 0 {
		t.Error("released pages do not read as zeros")
	}
	full[len(full)/2] = 7
	if full[len(full)/2] != 7 {
		t.Error("a released page does not keep what is written")
	}
	if ReleasePages(nil) != 0 || ReleasePages(make([]byte, 100)) != 0 {
		t.Error("ReleasePages covered pages of a buffer smaller than a page")
	}
}
