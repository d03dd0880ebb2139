package dns

import (
	"strings"
	"testing"
)

func TestFilterMatch(t *testing.T) {
	f, err := NewFilter([]string{
		"+.lan",
		"*.example.com",
		"exact.org",
		".local",
		"time.*.com",
		"  # a comment",
		"",
		"Upper.CASE.net.",
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 6 {
		t.Fatalf("Len = %d, want 6", f.Len())
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		// +.lan: the name and every subdomain
		{"lan", true}, {"router.lan", true}, {"a.b.c.lan", true}, {"ROUTER.LAN.", true}, {"notlan", false}, {"lan.com", false},
		// *.example.com: exactly one more label
		{"www.example.com", true}, {"example.com", false}, {"a.www.example.com", false}, {"wwwexample.com", false},
		// exact
		{"exact.org", true}, {"www.exact.org", false}, {"exact.org.", true}, {"EXACT.ORG", true},
		// .local: subdomains only
		{"local", false}, {"printer.local", true}, {"a.b.local", true},
		// time.*.com: a wildcard in the middle
		{"time.apple.com", true}, {"time.a.b.com", false}, {"time.com", false}, {"xtime.apple.com", false},
		{"localhost", false},
		{"upper.case.net", true},
		// not names
		{"", false}, {".", false}, {"a..lan", false},
		{"google.com", false},
	} {
		if got := f.Match(tc.host); got != tc.want {
			t.Errorf("Match(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	var nilFilter *Filter
	if nilFilter.Match("anything") || nilFilter.Len() != 0 {
		t.Fatal("nil filter matched")
	}
	empty, err := NewFilter(nil)
	if err != nil || empty.Match("lan") {
		t.Fatalf("empty filter: %v", err)
	}
}

func TestFilterStarAlone(t *testing.T) {
	f, err := NewFilter([]string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	for h, want := range map[string]bool{"localhost": true, "wpad.": true, "a.b": false} {
		if got := f.Match(h); got != want {
			t.Errorf("* Match(%q) = %v, want %v", h, got, want)
		}
	}
}

func TestFilterPlusAlone(t *testing.T) {
	f, err := NewFilter([]string{"+"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a", "a.b", "x.y.z"} {
		if !f.Match(h) {
			t.Errorf("+ did not match %q", h)
		}
	}
}

func TestFilterErrors(t *testing.T) {
	for _, p := range []string{
		"a..b",
		"foo.+.com",
		"ab*.com",
		"geosite:cn",
		"rule-set:private",
		"a b.com",
		".",
		strings.Repeat("a", 64) + ".com",
		strings.Repeat("a.", 130) + "com",
		"+x.com",
	} {
		_, err := NewFilter([]string{"ok.com", p})
		if err == nil {
			t.Errorf("NewFilter(%q) accepted it", p)
			continue
		}
		if !strings.Contains(err.Error(), p[:min(len(p), 20)]) {
			t.Errorf("error %q does not name the pattern %q", err, p)
		}
	}
}

// TestFilterDeepWildcards: overlapping exact and "*" chains against deep
// names, where both branches stay alive at every label.
func TestFilterDeepWildcards(t *testing.T) {
	var pats []string
	for i := 1; i <= 60; i++ {
		pats = append(pats, strings.TrimSuffix(strings.Repeat("*.", i), ".")+".x")
		pats = append(pats, strings.TrimSuffix(strings.Repeat("a.", i), ".")+".x")
	}
	f, err := NewFilter(pats)
	if err != nil {
		t.Fatal(err)
	}
	if f.Match(strings.Repeat("a.", 100) + "y") {
		t.Fatal("matched a name under .y")
	}
	if f.Match(strings.Repeat("a.", 61) + "x") {
		t.Fatal("matched 61 labels under .x; the longest pattern has 60")
	}
	if !f.Match(strings.Repeat("b.", 37) + "x") {
		t.Fatal("did not match 37 labels under .x through the * chain")
	}
	if !f.Match(strings.Repeat("a.", 60) + "x") {
		t.Fatal("did not match 60 labels under .x")
	}
}

// TestFilterIDN: patterns written with internationalised names match the
// ASCII (xn--) form in which queries carry them.
func TestFilterIDN(t *testing.T) {
	f, err := NewFilter([]string{"+.Bücher.de", "*.日本.example", "straße.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"xn--bcher-kva.de", true}, {"www.xn--bcher-kva.de.", true}, {"bucher.de", false},
		{"a.xn--wgv71a.example", true}, {"xn--wgv71a.example", false},
		{"xn--strae-oqa.example", true}, {"strasse.example", false},
	} {
		if got := f.Match(tc.host); got != tc.want {
			t.Errorf("Match(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	for _, p := range []string{"+.-bücher.de", "bücher\u200d.de"} {
		_, err := NewFilter([]string{p})
		if err == nil || !strings.Contains(err.Error(), "not a valid internationalised domain label") || !strings.Contains(err.Error(), "xn--bcher-kva") {
			t.Errorf("NewFilter(%q): %v; want an invalid-label error with the ASCII form as a hint", p, err)
		}
		if err := CheckFilterPattern(p); err == nil {
			t.Errorf("CheckFilterPattern(%q) accepted it", p)
		}
	}
	if err := CheckFilterPattern(" +.bücher.de "); err != nil {
		t.Errorf("CheckFilterPattern: %v", err)
	}
}
