package rules

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

var testOpts = ParseOptions{TargetNames: []string{"corp", "proxy"}, BaseDir: "testdata"}

func mustParse(t *testing.T, text string) *Ruleset {
	t.Helper()
	rs, err := Parse(strings.NewReader(text), "rules.txt", testOpts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return rs
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// meta builds metadata: dst is "ip:port", host may be empty.
func meta(network, src, dst, host string) *Metadata {
	m := &Metadata{Network: network, Host: host, UID: -1}
	if src != "" {
		m.Src = ap(src)
	}
	if dst != "" {
		m.Dst = ap(dst)
	}
	return m
}

func TestMatchRuleTypes(t *testing.T) {
	const src = "192.168.1.10:40000"
	tests := []struct {
		name  string
		rule  string
		m     *Metadata
		match bool
	}{
		{"domain exact", "DOMAIN,example.com,corp", meta("tcp", src, "1.1.1.1:443", "example.com"), true},
		{"domain case and dot", "domain,Example.COM.,corp", meta("tcp", src, "", "EXAMPLE.com."), true},
		{"domain not sub", "DOMAIN,example.com,corp", meta("tcp", src, "", "www.example.com"), false},
		{"suffix self", "DOMAIN-SUFFIX,example.com,corp", meta("tcp", src, "", "example.com"), true},
		{"suffix sub", "DOMAIN-SUFFIX,example.com,corp", meta("tcp", src, "", "a.b.example.com"), true},
		{"suffix label boundary", "DOMAIN-SUFFIX,example.com,corp", meta("tcp", src, "", "badexample.com"), false},
		{"suffix plus form", "DOMAIN-SUFFIX,+.example.com,corp", meta("tcp", src, "", "x.example.com"), true},
		{"suffix no host", "DOMAIN-SUFFIX,example.com,corp", meta("tcp", src, "93.184.216.34:443", ""), false},
		{"keyword", "DOMAIN-KEYWORD,goog,corp", meta("tcp", src, "", "www.GOOGLE.com"), true},
		{"keyword miss", "DOMAIN-KEYWORD,goog,corp", meta("tcp", src, "", "example.com"), false},
		{"regex", `DOMAIN-REGEX,^ad[0-9]+\.example\.com$,corp`, meta("tcp", src, "", "ad12.example.com"), true},
		{"regex with commas", `DOMAIN-REGEX,^a{1,3}\.com$,corp`, meta("tcp", src, "", "aa.com"), true},
		{"regex miss", `DOMAIN-REGEX,^ad[0-9]+\.,corp`, meta("tcp", src, "", "adx.example.com"), false},
		{"ip-cidr", "IP-CIDR,10.0.0.0/8,corp", meta("tcp", src, "10.2.3.4:80", ""), true},
		{"ip-cidr no-resolve", "IP-CIDR,10.0.0.0/8,corp,no-resolve", meta("tcp", src, "10.2.3.4:80", ""), true},
		{"ip-cidr miss", "IP-CIDR,10.0.0.0/8,corp", meta("tcp", src, "11.2.3.4:80", ""), false},
		{"ip-cidr mapped dst", "IP-CIDR,10.0.0.0/8,corp", meta("tcp", src, "[::ffff:10.1.1.1]:80", ""), true},
		{"ip-cidr host known", "IP-CIDR,198.18.0.0/15,corp", meta("tcp", src, "198.18.0.5:80", "example.com"), false},
		{"ip-cidr6", "IP-CIDR6,2001:db8::/32,corp", meta("tcp", "[2001:db8::1]:5000", "[2001:db8:1::5]:443", ""), true},
		{"ip-cidr unmasked", "IP-CIDR,10.1.2.3/8,corp", meta("tcp", src, "10.200.0.1:80", ""), true},
		{"src-ip-cidr", "SRC-IP-CIDR,192.168.1.0/24,corp", meta("tcp", src, "1.1.1.1:80", ""), true},
		{"src-ip-cidr miss", "SRC-IP-CIDR,192.168.2.0/24,corp", meta("tcp", src, "1.1.1.1:80", ""), false},
		{"dst-port", "DST-PORT,443,corp", meta("tcp", src, "1.1.1.1:443", ""), true},
		{"dst-port domain request", "DST-PORT,443,corp", &Metadata{Network: "tcp", Host: "a.com", Dst: netip.AddrPortFrom(netip.Addr{}, 443), UID: -1}, true},
		{"dst-port range", "DST-PORT,1000-2000,corp", meta("tcp", src, "1.1.1.1:2000", ""), true},
		{"dst-port range miss", "DST-PORT,1000-2000,corp", meta("tcp", src, "1.1.1.1:2001", ""), false},
		{"dst-port list", "DST-PORT,80/443/8000-9000,corp", meta("tcp", src, "1.1.1.1:8500", ""), true},
		{"dst-port list miss", "DST-PORT,80/443/8000-9000,corp", meta("tcp", src, "1.1.1.1:444", ""), false},
		{"src-port", "SRC-PORT,40000,corp", meta("tcp", src, "1.1.1.1:80", ""), true},
		{"src-port miss", "SRC-PORT,40001-50000,corp", meta("tcp", src, "1.1.1.1:80", ""), false},
		{"network", "NETWORK,UDP,corp", meta("udp", src, "1.1.1.1:53", ""), true},
		{"network miss", "NETWORK,udp,corp", meta("tcp", src, "1.1.1.1:53", ""), false},
		{"process-name", "PROCESS-NAME,curl,corp", &Metadata{Process: "/usr/bin/curl", UID: -1}, true},
		{"process-name miss", "PROCESS-NAME,curl,corp", &Metadata{Process: "/usr/bin/wget", UID: -1}, false},
		{"process-path", "PROCESS-PATH,/usr/bin/curl,corp", &Metadata{Process: "/usr/bin/curl", UID: -1}, true},
		{"process-path miss", "PROCESS-PATH,/usr/bin/curl,corp", &Metadata{Process: "/opt/curl", UID: -1}, false},
		{"uid", "UID,1000,corp", &Metadata{UID: 1000}, true},
		{"uid range", "UID,1000-1999/0,corp", &Metadata{UID: 0}, true},
		{"uid unknown", "UID,0,corp", &Metadata{UID: -1}, false},
		{"match", "MATCH,corp", &Metadata{UID: -1}, true},
		{"and", "AND,((DOMAIN,baidu.com),(NETWORK,UDP)),corp", meta("udp", src, "", "baidu.com"), true},
		{"and miss", "AND,((DOMAIN,baidu.com),(NETWORK,UDP)),corp", meta("tcp", src, "", "baidu.com"), false},
		{"or", "OR,((DST-PORT,53),(DOMAIN-SUFFIX,lan)),corp", meta("tcp", src, "", "nas.lan"), true},
		{"or miss", "OR,((DST-PORT,53),(DOMAIN-SUFFIX,lan)),corp", meta("tcp", src, "1.1.1.1:80", ""), false},
		{"not", "NOT,((DOMAIN-SUFFIX,lan)),corp", meta("tcp", src, "", "example.com"), true},
		{"not miss", "NOT,((DOMAIN-SUFFIX,lan)),corp", meta("tcp", src, "", "nas.lan"), false},
		{"nested", "OR,((AND,((NETWORK,udp),(DST-PORT,443))),(NOT,((IP-CIDR,0.0.0.0/0)))),corp", meta("udp", src, "1.1.1.1:443", ""), true},
		{"nested not branch", "OR,((AND,((NETWORK,udp),(DST-PORT,443))),(NOT,((IP-CIDR,0.0.0.0/0)))),corp", meta("tcp", "[::1]:5", "[::2]:80", ""), true},
		{"nested miss", "OR,((AND,((NETWORK,udp),(DST-PORT,443))),(NOT,((IP-CIDR,0.0.0.0/0)))),corp", meta("tcp", src, "1.1.1.1:443", ""), false},
		{"logic with regex parens", `AND,((DOMAIN-REGEX,^(a|b)\.com$),(NETWORK,tcp)),corp`, meta("tcp", src, "", "b.com"), true},
		{"spaces", " DOMAIN-SUFFIX , example.com , corp ", meta("tcp", src, "", "example.com"), true},
		{"in-type", "IN-TYPE,tun,corp", &Metadata{InType: "tun", UID: -1}, true},
		{"in-type case", "in-type,SOCKS,corp", &Metadata{InType: "socks", UID: -1}, true},
		{"in-type miss", "IN-TYPE,tun,corp", &Metadata{InType: "socks", UID: -1}, false},
		{"in-type unknown", "IN-TYPE,tun,corp", &Metadata{UID: -1}, false},
		{"in-name", "IN-NAME,exec:curl,corp", &Metadata{InType: "exec", InName: "exec:curl", UID: -1}, true},
		{"in-name exact", "IN-NAME,exec:curl,corp", &Metadata{InType: "exec", InName: "exec:curl2", UID: -1}, false},
		{"in-name case matters", "IN-NAME,tunsocks0,corp", &Metadata{InName: "TUNSOCKS0", UID: -1}, false},
		{"in-user", "IN-USER,pixel,corp", &Metadata{InType: "wireguard", InName: "wg", InUser: "pixel", UID: -1}, true},
		{"in-user miss", "IN-USER,pixel,corp", &Metadata{InType: "wireguard", InName: "wg", InUser: "laptop", UID: -1}, false},
		{"in-user none", "IN-USER,pixel,corp", &Metadata{InType: "socks", UID: -1}, false},
		{"in-type and in-user", "AND,((IN-TYPE,socks),(IN-USER,alice)),corp", &Metadata{InType: "socks", InUser: "alice", UID: -1}, true},
		{"in-type and in-user miss", "AND,((IN-TYPE,socks),(IN-USER,alice)),corp", &Metadata{InType: "wireguard", InUser: "alice", UID: -1}, false},
		{"or in-name", "OR,((IN-NAME,wg),(DST-PORT,22)),corp", &Metadata{InName: "wg", UID: -1}, true},
		{"not in-type", "NOT,((IN-TYPE,tun)),corp", &Metadata{InType: "socks", UID: -1}, true},
		{"not in-type miss", "NOT,((IN-TYPE,tun)),corp", &Metadata{InType: "tun", UID: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := mustParse(t, tt.rule)
			got := rs.Match(tt.m, nil)
			if got.Matched() != tt.match {
				t.Fatalf("Match = %v, want matched=%v", got, tt.match)
			}
			if tt.match {
				if got.Action != (Action{Kind: Proxy, Target: "corp"}) || got.Index != 0 || got.Source != "rules.txt:1" {
					t.Fatalf("Match = %+v", got)
				}
			} else if got.Action.Kind != Direct || got.Index != -1 {
				t.Fatalf("no match should be DIRECT/-1, got %+v", got)
			}
		})
	}
}

func TestTargets(t *testing.T) {
	rs := mustParse(t, "DOMAIN,a.com,DIRECT\nDOMAIN,b.com,reject\nDOMAIN,c.com,REJECT-DROP\nDOMAIN,d.com,proxy\n")
	want := map[string]Action{
		"a.com": {Kind: Direct}, "b.com": {Kind: Reject}, "c.com": {Kind: RejectDrop}, "d.com": {Kind: Proxy, Target: "proxy"},
	}
	for host, a := range want {
		if got := rs.Match(&Metadata{Host: host, UID: -1}, nil); got.Action != a || !got.Matched() {
			t.Errorf("%s: got %+v, want %v", host, got, a)
		}
	}
	if got := (Action{Kind: Proxy, Target: "corp"}).String(); got != "corp" {
		t.Errorf("Action.String = %q", got)
	}

	called := map[string]bool{}
	rs, err := Parse(strings.NewReader("MATCH,chain1"), "x", ParseOptions{Targets: func(n string) bool { called[n] = true; return n == "chain1" }})
	if err != nil || !called["chain1"] || rs.Match(&Metadata{UID: -1}, nil).Action.Target != "chain1" {
		t.Fatalf("Targets func not honoured: %v %v", err, called)
	}
	if _, err := Parse(strings.NewReader("MATCH,anything"), "x", ParseOptions{}); err != nil {
		t.Fatalf("nil Targets and TargetNames should accept any name: %v", err)
	}
}

func TestFirstMatchWins(t *testing.T) {
	rules := strings.Join([]string{
		"DOMAIN-KEYWORD,ads,REJECT",        // 0 linear
		"DOMAIN-SUFFIX,example.com,corp",   // 1 indexed
		"DOMAIN,www.example.com,DIRECT",    // 2 indexed, shadowed by 1
		"IP-CIDR,10.0.0.0/8,proxy",         // 3
		"IP-CIDR,10.1.0.0/16,DIRECT",       // 4 more specific but later: never wins
		"DST-PORT,22,REJECT-DROP",          // 5 linear
		"IP-CIDR,192.168.0.0/16,DIRECT",    // 6 later than 5
		"SRC-IP-CIDR,172.16.0.0/12,REJECT", // 7
		"IP-CIDR,100.64.1.0/24,corp",       // 8: a more specific prefix before its supernet
		"IP-CIDR,100.64.0.0/10,DIRECT",     // 9
		"RULE-SET,domains.txt,proxy",       // 10: example.com in the set is shadowed by 1
		"MATCH,DIRECT",                     // 11
	}, "\n")
	rs := mustParse(t, rules)
	tests := []struct {
		name string
		m    *Metadata
		want int
	}{
		{"keyword before suffix", meta("tcp", "", "", "ads.example.com"), 0},
		{"suffix before exact", meta("tcp", "", "", "www.example.com"), 1},
		{"earlier wide prefix beats later narrow", meta("tcp", "", "10.1.2.3:80", ""), 3},
		{"linear port before later prefix", meta("tcp", "", "192.168.1.1:22", ""), 5},
		{"later prefix when port differs", meta("tcp", "", "192.168.1.1:80", ""), 6},
		{"earlier prefix beats later linear", meta("tcp", "", "10.0.0.1:22", ""), 3},
		{"narrow first", meta("tcp", "", "100.64.1.9:80", ""), 8},
		{"wide second", meta("tcp", "", "100.64.2.9:80", ""), 9},
		{"src prefix", meta("tcp", "172.16.5.5:1000", "8.8.8.8:80", ""), 7},
		{"dst beats src by order", meta("tcp", "172.16.5.5:1000", "10.0.0.1:80", ""), 3},
		{"rule set", meta("tcp", "", "", "m.youtube.com"), 10},
		{"fallthrough", meta("tcp", "", "8.8.8.8:80", ""), 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rs.Match(tt.m, nil); got.Index != tt.want {
				t.Fatalf("matched %v, want rule #%d", got, tt.want+1)
			}
		})
	}
}

func TestRuleSetFiles(t *testing.T) {
	rs := mustParse(t, "RULE-SET,domains.txt,corp\nRULE-SET,classical.txt,proxy\nRULE-SET,provider.yaml,REJECT\n")
	tests := []struct {
		m         *Metadata
		rule      int // -1: no match
		entry     string
		entryLine string
	}{
		{meta("tcp", "", "", "example.com"), 0, "example.com", "domains.txt:2"},
		{meta("tcp", "", "", "www.example.com"), -1, "", ""}, // bare domain is exact
		{meta("tcp", "", "", "google.com"), 0, "+.google.com", "domains.txt:3"},
		{meta("tcp", "", "", "mail.google.com"), 0, "+.google.com", "domains.txt:3"},
		{meta("tcp", "", "", "youtube.com"), 0, ".youtube.com", "domains.txt:4"},
		{meta("tcp", "", "", "m.youtube.com"), 0, ".youtube.com", "domains.txt:4"},
		{meta("tcp", "", "", "a.wild.test"), 0, "*.wild.test", "domains.txt:5"},
		{meta("tcp", "", "", "wild.test"), -1, "", ""},
		{meta("tcp", "", "", "a.b.wild.test"), -1, "", ""},
		{meta("tcp", "", "10.9.9.9:1", ""), 0, "10.0.0.0/8", "domains.txt:6"},
		{meta("tcp", "", "[2001:db8::9]:1", ""), 0, "2001:db8::/32", "domains.txt:7"},
		{meta("tcp", "", "192.0.2.7:1", ""), 0, "192.0.2.7", "domains.txt:8"},
		{meta("tcp", "", "192.0.2.8:1", ""), -1, "", ""},
		{meta("tcp", "", "", "x.corp.internal"), 1, "DOMAIN-SUFFIX,corp.internal", "classical.txt:2"},
		{meta("tcp", "", "", "mytracker.net"), 1, "DOMAIN-KEYWORD,tracker", "classical.txt:3"},
		{meta("tcp", "", "172.20.0.1:80", ""), 1, "IP-CIDR,172.16.0.0/12,no-resolve", "classical.txt:4"},
		{meta("udp", "", "1.1.1.1:443", ""), 1, "AND,((NETWORK,udp),(DST-PORT,443))", "classical.txt:5"},
		{&Metadata{Process: "/usr/bin/ssh", UID: -1}, 1, "PROCESS-NAME,ssh", "classical.txt:6"},
		{meta("tcp", "", "", "a.yaml.test"), 2, "+.yaml.test", "provider.yaml:2"},
		{meta("tcp", "", "", "exact.other.test"), 2, "DOMAIN,exact.other.test", "provider.yaml:3"},
		{meta("tcp", "", "198.51.100.1:1", ""), 2, "198.51.100.0/24", "provider.yaml:4"},
	}
	for _, tt := range tests {
		got := rs.Match(tt.m, nil)
		if got.Index != tt.rule || got.Entry != tt.entry || got.EntrySource != tt.entryLine {
			t.Errorf("%+v: got %+v, want rule %d entry %q at %s", *tt.m, got, tt.rule, tt.entry, tt.entryLine)
		}
	}
	if !rs.NeedsDomain() || !rs.NeedsProcess() {
		t.Errorf("NeedsDomain/NeedsProcess should see inside RULE-SET files")
	}
	got := rs.Match(meta("tcp", "", "", "mail.google.com"), nil).String()
	want := `corp by rule #1 "RULE-SET,domains.txt,corp" (rules.txt:1) via "+.google.com" (domains.txt:3)`
	if got != want {
		t.Errorf("String() = %s\nwant        %s", got, want)
	}
}

func TestRuleSetLoader(t *testing.T) {
	fsys := fstest.MapFS{"sets/a.txt": {Data: []byte("a.test\n")}}
	var opened []string
	opts := ParseOptions{RuleSetLoader: func(p string) (io.ReadCloser, error) {
		opened = append(opened, p)
		return fsys.Open(p)
	}}
	rs, err := Parse(strings.NewReader("RULE-SET,sets/a.txt,DIRECT\nRULE-SET,sets/a.txt,REJECT\n"), "r", opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(opened) != 1 {
		t.Errorf("set file opened %d times, want once", len(opened))
	}
	if got := rs.Match(&Metadata{Host: "a.test", UID: -1}, nil); got.Index != 0 || got.Action.Kind != Direct {
		t.Errorf("got %+v", got)
	}
	_, err = Parse(strings.NewReader("\nRULE-SET,sets/missing.txt,DIRECT\n"), "r", opts)
	if err == nil || !strings.HasPrefix(err.Error(), `r:2: RULE-SET "sets/missing.txt"`) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing set: %v", err)
	}
}

func TestRuleSetDefaultBaseDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "set.txt"), []byte("+.base.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := Parse(strings.NewReader("RULE-SET,set.txt,REJECT"), filepath.Join(dir, "rules.txt"), ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Match(&Metadata{Host: "x.base.test", UID: -1}, nil); got.Action.Kind != Reject {
		t.Errorf("got %+v", got)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // each must appear in the error text
	}{
		{"unknown type", "# c\n\nDOMAN-SUFFIX,a.com,DIRECT", []string{`rules.txt:3: unknown rule type "DOMAN-SUFFIX"; did you mean DOMAIN-SUFFIX? expected one of DOMAIN, DOMAIN-SUFFIX,`}},
		{"unknown target", "DOMAIN,a.com,proxyy", []string{`rules.txt:1: unknown target "proxyy"; did you mean proxy? known: DIRECT, REJECT, REJECT-DROP, corp, proxy`}},
		{"missing target", "DOMAIN,a.com", []string{"rules.txt:1: DOMAIN needs a payload and a target; expected DOMAIN,example.com,TARGET"}},
		{"extra field", "DOMAIN,a.com,b.com,DIRECT", []string{`rules.txt:1: unexpected extra field "b.com"`}},
		{"bad cidr", "IP-CIDR,10.0.0.0/33,DIRECT", []string{`rules.txt:1: bad CIDR "10.0.0.0/33"`, "expected an address/length"}},
		{"cidr without length", "IP-CIDR,10.0.0.1,DIRECT", []string{`rules.txt:1: bad CIDR "10.0.0.1": missing /length; write 10.0.0.1/32`}},
		{"port out of range", "DST-PORT,70000,DIRECT", []string{"rules.txt:1: port 70000 out of range; expected a port (0-65535)"}},
		{"port range reversed", "SRC-PORT,2000-1000,DIRECT", []string{`rules.txt:1: bad port range "2000-1000"`}},
		{"port garbage", "DST-PORT,https,DIRECT", []string{`rules.txt:1: bad port "https"`}},
		{"uid", "UID,-5,DIRECT", []string{`rules.txt:1: bad uid range "-5"`}},
		{"network", "NETWORK,icmp,DIRECT", []string{`rules.txt:1: unknown network "icmp"; expected NETWORK,tcp or NETWORK,udp`}},
		{"regex", "DOMAIN-REGEX,a(,DIRECT", []string{"rules.txt:1: bad regular expression"}},
		{"domain chars", "DOMAIN,a b.com,DIRECT", []string{`rules.txt:1: invalid character ' ' in domain "a b.com"`}},
		{"domain wildcard", "DOMAIN,*.a.com,DIRECT", []string{"wildcard in domain", "use DOMAIN-SUFFIX"}},
		{"unbalanced and", "AND,((DOMAIN,a.com),(NETWORK,udp),DIRECT", []string{"rules.txt:1: unbalanced parentheses in AND: missing ')'"}},
		{"unbalanced extra close", "AND,((DOMAIN,a.com)),(NETWORK,udp)),DIRECT", []string{"rules.txt:1: unbalanced parentheses in AND"}},
		{"not two", "NOT,((DOMAIN,a.com),(DOMAIN,b.com)),DIRECT", []string{"NOT takes exactly one condition, got 2"}},
		{"logic no parens", "OR,DOMAIN,a.com,DIRECT", []string{"OR needs its conditions in parentheses"}},
		{"logic inner error", "AND,((DOMAIN,a.com),(DST-PORT,99999)),DIRECT", []string{"rules.txt:1: port 99999 out of range"}},
		{"logic inner target", "AND,((DOMAIN,a.com,DIRECT)),DIRECT", []string{`unexpected extra field "DIRECT"`, "no target inside AND/OR/NOT"}},
		{"logic empty", "OR,(),DIRECT", []string{"OR has no conditions"}},
		{"match nested", "AND,((MATCH,x)),DIRECT", []string{"MATCH is not allowed inside AND/OR/NOT"}},
		{"match extra", "MATCH,a,b", []string{"MATCH takes exactly one target"}},
		{"geoip", "GEOIP,CN,DIRECT", []string{"GEOIP is not supported"}},
		{"rule-set no target", "RULE-SET,domains.txt", []string{"RULE-SET needs a path and a target"}},
		{"rule-set missing file", "RULE-SET,nope.txt,DIRECT", []string{`rules.txt:1: RULE-SET "nope.txt": open testdata/nope.txt`}},
		{"rule-set bad lines", "DOMAIN,ok.com,DIRECT\nRULE-SET,bad_set.txt,DIRECT", []string{
			`bad_set.txt:2: invalid character ' ' in domain "bad domain here"`,
			`bad_set.txt:3: bad CIDR "10.0.0.0/33"`,
			`bad_set.txt:4: unexpected extra field "DIRECT"; expected DOMAIN,example.com with no target in a RULE-SET file`,
		}},
		{"several", "DOMAIN,a.com,DIRECT\nDOMAN,x,DIRECT\nDOMAIN,b.com,nope\n", []string{"rules.txt:2: unknown rule type", "rules.txt:3: unknown target"}},
		{"in-type unknown", "\nIN-TYPE,wireguards,DIRECT", []string{`rules.txt:2: unknown inbound type "wireguards"; did you mean wireguard? expected IN-TYPE with one of tun, wireguard, exec, gateway, socks`}},
		{"in-type nested", "AND,((IN-TYPE,vpn),(DST-PORT,1)),DIRECT", []string{`rules.txt:1: unknown inbound type "vpn"`}},
		{"in-name empty", "IN-NAME,,DIRECT", []string{"rules.txt:1: empty inbound name; expected IN-NAME,exec:curl"}},
		{"in-user empty", "NOT,((IN-USER,)),DIRECT", []string{"rules.txt:1: empty inbound user; expected IN-USER,alice"}},
		{"in-user no target", "IN-USER,alice", []string{"rules.txt:1: IN-USER needs a payload and a target; expected IN-USER,alice,TARGET"}},
		{"in-type typo", "IN-TYP,tun,DIRECT", []string{"did you mean IN-TYPE?"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := Parse(strings.NewReader(tt.text), "rules.txt", testOpts)
			if err == nil {
				t.Fatalf("no error; parsed %v", rs)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line == 0 || pe.File == "" {
				t.Errorf("error has no *ParseError with a position: %#v", err)
			}
		})
	}
}

func TestParseErrorsCapped(t *testing.T) {
	text := strings.Repeat("BOGUS,x,DIRECT\n", 50)
	_, err := Parse(strings.NewReader(text), "r", testOpts)
	if err == nil {
		t.Fatal("no error")
	}
	if n := strings.Count(err.Error(), "unknown rule type"); n != maxErrors {
		t.Errorf("%d errors reported, want %d", n, maxErrors)
	}
	if !strings.Contains(err.Error(), "too many errors") {
		t.Errorf("missing 'too many errors': %v", err)
	}
}

func TestParseLines(t *testing.T) {
	lines := []Line{
		{Text: "DOMAIN,a.com,DIRECT", File: "config.yaml", Line: 12},
		{Text: "DST-PORT,1-2-3,DIRECT", File: "config.yaml", Line: 13},
	}
	_, err := ParseLines(lines, testOpts)
	if err == nil || !strings.HasPrefix(err.Error(), "config.yaml:13: ") {
		t.Fatalf("err = %v", err)
	}
	rs, err := ParseLines(lines[:1], testOpts)
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Match(&Metadata{Host: "a.com", UID: -1}, nil); got.Source != "config.yaml:12" || got.Rule != "DOMAIN,a.com,DIRECT" {
		t.Errorf("got %+v", got)
	}
}

func TestLongLine(t *testing.T) {
	text := "DOMAIN,a.com,DIRECT\n" + strings.Repeat("x", maxLineLen+10) + "\n"
	_, err := Parse(strings.NewReader(text), "r", testOpts)
	if err == nil || !strings.HasPrefix(err.Error(), "r:2: line too long") {
		t.Fatalf("err = %v", err)
	}
}

func TestProcessLookupLazy(t *testing.T) {
	rs := mustParse(t, "DOMAIN-SUFFIX,example.com,DIRECT\nDST-PORT,22,REJECT\nPROCESS-NAME,curl,corp\nUID,1000,proxy\nMATCH,REJECT\n")
	calls := 0
	lookup := func(m *Metadata) (string, int, bool) {
		calls++
		return "/usr/bin/curl", 1000, true
	}
	// An earlier indexed rule matches: no lookup.
	if got := rs.Match(meta("tcp", "", "", "www.example.com"), lookup); got.Index != 0 || calls != 0 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	// An earlier linear rule matches: no lookup.
	if got := rs.Match(meta("tcp", "", "1.2.3.4:22", ""), lookup); got.Index != 1 || calls != 0 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	// The process rule is reached: one lookup, result stored in metadata.
	m := meta("tcp", "", "1.2.3.4:80", "")
	if got := rs.Match(m, lookup); got.Index != 2 || calls != 1 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	if m.Process != "/usr/bin/curl" || m.UID != 1000 {
		t.Errorf("metadata not filled: %+v", m)
	}
	// Both process and uid rules reached: still one lookup.
	calls = 0
	lookup2 := func(m *Metadata) (string, int, bool) { calls++; return "/bin/wget", 1000, true }
	if got := rs.Match(meta("tcp", "", "1.2.3.4:80", ""), lookup2); got.Index != 3 || calls != 1 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	// Lookup fails: process rules do not match, no panic.
	calls = 0
	fail := func(m *Metadata) (string, int, bool) { calls++; return "", 0, false }
	if got := rs.Match(meta("tcp", "", "1.2.3.4:80", ""), fail); got.Index != 4 || calls != 1 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	// Metadata already known: no lookup.
	calls = 0
	if got := rs.Match(&Metadata{Process: "/usr/bin/curl", UID: 5}, lookup); got.Index != 2 || calls != 0 {
		t.Fatalf("got %v, lookup called %d times", got, calls)
	}
	// nil lookup.
	if got := rs.Match(meta("tcp", "", "1.2.3.4:80", ""), nil); got.Index != 4 {
		t.Fatalf("got %v", got)
	}
}

func TestNeeds(t *testing.T) {
	tests := []struct {
		text            string
		domain, process bool
	}{
		{"IP-CIDR,10.0.0.0/8,DIRECT\nMATCH,DIRECT", false, false},
		{"DOMAIN-KEYWORD,x,DIRECT", true, false},
		{"AND,((NETWORK,udp),(NOT,((DOMAIN-REGEX,x)))),DIRECT", true, false},
		{"OR,((DST-PORT,1),(UID,0)),DIRECT", false, true},
		{"PROCESS-PATH,/bin/x,DIRECT", false, true},
	}
	for _, tt := range tests {
		rs := mustParse(t, tt.text)
		if rs.NeedsDomain() != tt.domain || rs.NeedsProcess() != tt.process {
			t.Errorf("%q: NeedsDomain=%v NeedsProcess=%v", tt.text, rs.NeedsDomain(), rs.NeedsProcess())
		}
	}
}

// TestInboundRulesExplain: an inbound rule explains itself like any other,
// also from a RULE-SET file, and an unknown inbound falls through.
func TestInboundRulesExplain(t *testing.T) {
	fsys := fstest.MapFS{"in.txt": {Data: []byte("# inbound entries\nIN-USER,pixel\nIN-TYPE,exec\n")}}
	opts := testOpts
	opts.RuleSetLoader = func(p string) (io.ReadCloser, error) { return fsys.Open(p) }
	rs, err := Parse(strings.NewReader("IN-TYPE,socks,REJECT\nRULE-SET,in.txt,corp\n"), "rules.txt", opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		m    Metadata
		want string
	}{
		{Metadata{InType: "socks", InName: "socks", InUser: "pixel", UID: -1}, `REJECT by rule #1 "IN-TYPE,socks,REJECT" (rules.txt:1)`},
		{Metadata{InType: "wireguard", InName: "wg", InUser: "pixel", UID: -1}, `corp by rule #2 "RULE-SET,in.txt,corp" (rules.txt:2) via "IN-USER,pixel" (in.txt:2)`},
		{Metadata{InType: "exec", InName: "exec:curl", UID: -1}, `corp by rule #2 "RULE-SET,in.txt,corp" (rules.txt:2) via "IN-TYPE,exec" (in.txt:3)`},
		{Metadata{UID: -1}, "DIRECT (no rule matched; default)"},
	} {
		if got := rs.Match(&tt.m, nil).String(); got != tt.want {
			t.Errorf("%+v: got %s, want %s", tt.m, got, tt.want)
		}
	}
}

func TestMatchString(t *testing.T) {
	rs := mustParse(t, "\nDOMAIN,a.com,REJECT\n")
	if got, want := rs.Match(&Metadata{Host: "a.com", UID: -1}, nil).String(), `REJECT by rule #1 "DOMAIN,a.com,REJECT" (rules.txt:2)`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := rs.Match(&Metadata{Host: "b.com", UID: -1}, nil).String(), "DIRECT (no rule matched; default)"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	var nilRS *Ruleset
	if nilRS.Match(&Metadata{}, nil).Matched() || rs.Match(nil, nil).Matched() {
		t.Error("nil ruleset or metadata should not match")
	}
}

func TestMappedPrefixRule(t *testing.T) {
	rs := mustParse(t, "IP-CIDR6,::ffff:10.0.0.0/104,DIRECT\nMATCH,REJECT")
	if got := rs.Match(meta("tcp", "", "10.1.1.1:80", ""), nil); got.Index != 0 {
		t.Errorf("IPv4-mapped prefix should match IPv4 flows: %v", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("DOMAIN,a.com,DIRECT\nIP-CIDR,10.0.0.0/8,corp\n")
	loader := func(p string) (io.ReadCloser, error) {
		if p == "set.txt" {
			return io.NopCloser(strings.NewReader("+.a.com\n10.0.0.0/8\nDOMAIN-KEYWORD,x\n")), nil
		}
		return nil, os.ErrNotExist
	}
	metas := []*Metadata{
		meta("tcp", "1.2.3.4:5", "10.0.0.1:443", ""),
		meta("udp", "[::1]:5", "[2001:db8::1]:53", "www.a.com"),
		{Host: "A.COM.", UID: 0},
	}
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := Parse(strings.NewReader(text), "f", ParseOptions{TargetNames: []string{"corp"}, RuleSetLoader: loader})
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		for _, m := range metas {
			c := *m
			got := rs.Match(&c, func(*Metadata) (string, int, bool) { return "/bin/x", 1, true })
			if got.Matched() && (got.Index >= rs.Len() || got.Rule == "") {
				t.Fatalf("bad match %+v", got)
			}
			c = *m
			if c.Process == "" { // what the lookup said
				c.Process = "/bin/x"
			}
			if c.UID < 0 {
				c.UID = 1
			}
			if want := linearIndex(rs, &c); got.Index != want {
				t.Fatalf("indexed match %d, linear scan %d for %+v", got.Index, want, c)
			}
			_ = got.String()
		}
	})
}

func TestRuleSetLongLine(t *testing.T) {
	opts := ParseOptions{RuleSetLoader: func(string) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("a.com\nb.com\n" + strings.Repeat("c", maxLineLen+1))), nil
	}}
	_, err := Parse(strings.NewReader("RULE-SET,s.txt,DIRECT"), "r", opts)
	if err == nil || !strings.HasPrefix(err.Error(), "s.txt:3: line too long") {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentMatch(t *testing.T) {
	rs := mustParse(t, "DOMAIN-SUFFIX,a.com,corp\nIP-CIDR,10.0.0.0/8,proxy\nPROCESS-NAME,x,REJECT\nMATCH,DIRECT")
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 1000 {
				m := meta("tcp", "", "11.0.0.1:80", "")
				if (i+g)%2 == 0 {
					m.Host = "www.a.com"
				}
				got := rs.Match(m, func(*Metadata) (string, int, bool) { return "/bin/y", 1, true })
				if want := 3 - 3*((i+g+1)%2); got.Index != want {
					t.Errorf("got %v want %d", got, want)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

// linearIndex is the reference matcher: every entry in order, no indexes.
func linearIndex(rs *Ruleset, m *Metadata) int {
	x := mctx{m: m, host: normHost(m.Host)}
	for _, e := range rs.entries {
		if e.c.match(&x) {
			return int(e.rule)
		}
	}
	return -1
}

// TestIndexesAgreeWithLinearScan compares the indexed matcher with a plain
// scan on random rule lists full of overlapping prefixes and domains.
func TestIndexesAgreeWithLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	labels := []string{"a", "b", "c", "com", "net"}
	domain := func() string {
		n := 1 + r.IntN(3)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = labels[r.IntN(len(labels))]
		}
		return strings.Join(parts, ".")
	}
	addr := func() netip.Addr {
		if r.IntN(4) == 0 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(r.IntN(4))})
		}
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(4))})
	}
	for round := range 200 {
		var b strings.Builder
		for range 1 + r.IntN(30) {
			switch r.IntN(9) {
			case 0:
				fmt.Fprintf(&b, "DOMAIN,%s,DIRECT\n", domain())
			case 1:
				fmt.Fprintf(&b, "DOMAIN-SUFFIX,%s,REJECT\n", domain())
			case 2:
				fmt.Fprintf(&b, "DOMAIN-KEYWORD,%s,corp\n", labels[r.IntN(len(labels))])
			case 3, 4:
				a := addr()
				fmt.Fprintf(&b, "IP-CIDR,%s,proxy\n", netip.PrefixFrom(a, r.IntN(a.BitLen()+1)).Masked())
			case 5:
				a := addr()
				fmt.Fprintf(&b, "SRC-IP-CIDR,%s,DIRECT\n", netip.PrefixFrom(a, r.IntN(a.BitLen()+1)).Masked())
			case 6:
				fmt.Fprintf(&b, "DST-PORT,%d-%d,REJECT\n", r.IntN(3), 2+r.IntN(3))
			case 7:
				fmt.Fprintf(&b, "AND,((NETWORK,udp),(DOMAIN-SUFFIX,%s)),corp\n", domain())
			case 8:
				fmt.Fprintf(&b, "RULE-SET,domains.txt,REJECT\n")
			}
		}
		rs := mustParse(t, b.String())
		for range 50 {
			m := &Metadata{Network: []string{"tcp", "udp"}[r.IntN(2)], Src: netip.AddrPortFrom(addr(), 9), Dst: netip.AddrPortFrom(addr(), uint16(r.IntN(6))), UID: -1}
			if r.IntN(2) == 0 {
				m.Host = domain()
			}
			if got, want := rs.Match(m, nil).Index, linearIndex(rs, m); got != want {
				t.Fatalf("round %d: rules\n%s\nmetadata %+v: indexed match %d, linear scan %d", round, b.String(), *m, got, want)
			}
		}
	}
}
