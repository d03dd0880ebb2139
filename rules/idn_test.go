package rules

import (
	"io"
	"strings"
	"testing"
	"testing/fstest"
)

// TestIDNRules: rules written with internationalised names match the ASCII
// (xn--) form in which DNS queries and the fake-IP pool carry them, and the
// Unicode form too (a SOCKS client or `tunsocks explain` may send it).
func TestIDNRules(t *testing.T) {
	fsys := fstest.MapFS{"idn.txt": {Data: []byte("+.müller.example\nDOMAIN,straße.example\n*.日本.example\n")}}
	opts := testOpts
	opts.RuleSetLoader = func(p string) (io.ReadCloser, error) { return fsys.Open(p) }
	rs, err := Parse(strings.NewReader(`DOMAIN-SUFFIX,bücher.de,DIRECT
DOMAIN,BÜCHER.example,corp
AND,((DOMAIN-SUFFIX,café.example),(NETWORK,tcp)),proxy
RULE-SET,idn.txt,REJECT
MATCH,proxy
`), "rules.txt", opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host string
		rule int
	}{
		{"xn--bcher-kva.de", 0},
		{"www.xn--bcher-kva.de", 0},
		{"bücher.de", 0},
		{"www.Bücher.de.", 0},
		{"xn--bcher-kva.example", 1},
		{"xn--caf-dma.example", 2},
		{"shop.xn--mller-kva.example", 3},
		{"xn--strae-oqa.example", 3}, // IDNA2008: ß is kept, not "strasse"
		{"a.xn--wgv71a.example", 3},  // 日本
		{"bucher.de", 4},             // the ASCII look-alike is another name
		{"xn--bcher-kva.de.evil", 4}, // a suffix matches on label boundaries
	} {
		if got := rs.Match(&Metadata{Network: "tcp", Host: tt.host, UID: -1}, nil); got.Index != tt.rule {
			t.Errorf("%s: matched rule %d (%s), want %d", tt.host, got.Index, got, tt.rule)
		}
	}
}

func TestIDNErrors(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		want       []string
	}{
		{"invalid label", "DOMAIN,ok.example,DIRECT\nDOMAIN-SUFFIX,-bücher.de,DIRECT", []string{
			`rules.txt:2: domain "-bücher.de": label "-bücher" is not a valid internationalised domain label`, "xn--"}},
		{"keyword", "DOMAIN-KEYWORD,bücher,DIRECT", []string{
			`rules.txt:1: non-ASCII keyword "bücher"`, "DOMAIN-SUFFIX,bücher.de", "xn--bcher-kva"}},
		{"regex", `DOMAIN-REGEX,^bücher\.de$,DIRECT`, []string{
			`rules.txt:1: non-ASCII regular expression`, "xn--"}},
		{"rule-set line", "RULE-SET,bad_idn.txt,DIRECT", []string{
			`bad_idn.txt:2: domain "bücher\u200d.de": label`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{"bad_idn.txt": {Data: []byte("ok.example\n+.bücher\u200d.de\n")}}
			opts := testOpts
			opts.RuleSetLoader = func(p string) (io.ReadCloser, error) { return fsys.Open(p) }
			_, err := Parse(strings.NewReader(tt.text), "rules.txt", opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
		})
	}
}
