package suggest

import (
	"strings"
	"testing"
)

func TestDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "abc", 0}, {"proxie", "proxies", 1}, {"kitten", "sitting", 3}, {"", "abc", 3}, {strings.Repeat("a", 65), "a", 1 << 30}} {
		if got := Distance(tc.a, tc.b); got != tc.d {
			t.Errorf("Distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}

func TestClosest(t *testing.T) {
	c, d := Closest("DOMAN-SUFFIX", []string{"DOMAIN", "DOMAIN-SUFFIX", "IP-CIDR"}, strings.ToUpper)
	if c != "DOMAIN-SUFFIX" || d != 1 {
		t.Errorf("Closest = %q %d", c, d)
	}
	if c, _ := Closest("x", nil, strings.ToUpper); c != "" {
		t.Errorf("no candidates gave %q", c)
	}
}
