package rules

import "testing"

// NameCouldMatter is true exactly when a rule looking at the domain comes
// before the first rule the flow matches without a name.
func TestNameCouldMatter(t *testing.T) {
	rs := mustParse(t, `IP-CIDR,10.0.0.0/8,DIRECT
DST-PORT,22,DIRECT
SRC-IP-CIDR,192.168.9.0/24,REJECT
DOMAIN-SUFFIX,corp.example,corp
IP-CIDR,172.16.0.0/12,proxy
NOT,((DOMAIN-KEYWORD,ads)),proxy
MATCH,DIRECT
`)
	for _, tc := range []struct {
		name, src, dst string
		want           bool
	}{
		{"ip rule before every domain rule", "192.168.1.2:5000", "10.1.2.3:443", false},
		{"port rule before", "192.168.1.2:5000", "203.0.113.9:22", false},
		{"source rule before", "192.168.9.2:5000", "203.0.113.9:443", false},
		{"ip rule after a domain rule", "192.168.1.2:5000", "172.16.1.1:443", true},
		{"only MATCH", "192.168.1.2:5000", "203.0.113.9:443", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rs.NameCouldMatter(meta("tcp", tc.src, tc.dst, ""), nil); got != tc.want {
				t.Fatalf("NameCouldMatter = %v, want %v", got, tc.want)
			}
		})
	}
	if mustParse(t, "IP-CIDR,10.0.0.0/8,DIRECT\nMATCH,proxy\n").NameCouldMatter(meta("tcp", "1.1.1.1:1", "8.8.8.8:53", ""), nil) {
		t.Fatal("a rule set without domain rules: a name cannot matter")
	}
	// A domain rule nested in a logical rule counts from that rule on.
	nested := mustParse(t, "AND,((NETWORK,udp),(DOMAIN,q.example)),REJECT\nIP-CIDR,10.0.0.0/8,DIRECT\n")
	if !nested.NameCouldMatter(meta("udp", "1.1.1.1:1", "10.0.0.1:443", ""), nil) {
		t.Fatal("nested domain rule first: the name could matter")
	}
}

// With RealDst, a flow known by a sniffed name still matches IP rules, and
// the first matching rule of either kind wins.
func TestRealDstMatchesIPRules(t *testing.T) {
	rs := mustParse(t, "IP-CIDR,10.0.0.0/8,REJECT\nDOMAIN,a.example,corp\nIP-CIDR,172.16.0.0/12,proxy\nMATCH,DIRECT\n")
	for _, tc := range []struct {
		name, dst, host string
		real            bool
		want            string
	}{
		{"ip rule first wins over the name", "10.0.0.1:443", "a.example", true, "REJECT"},
		{"name first wins over the ip rule", "172.16.0.1:443", "a.example", true, "corp"},
		{"ip rule when the name matches none", "172.16.0.1:443", "b.example", true, "proxy"},
		{"fake ip: no ip rule", "10.0.0.1:443", "a.example", false, "corp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := meta("tcp", "192.168.1.2:5000", tc.dst, tc.host)
			m.RealDst = tc.real
			if got := rs.Match(m, nil).Action.String(); got != tc.want {
				t.Fatalf("Match = %s, want %s", got, tc.want)
			}
		})
	}
}

// When NameCouldMatter is false, no name changes the rule (the router
// relies on it to skip sniffing); when true, some name does.
func TestNameCouldMatterAgreesWithMatch(t *testing.T) {
	rs := mustParse(t, `DST-PORT,22,DIRECT
DOMAIN-SUFFIX,corp.example,corp
IP-CIDR,172.16.0.0/12,proxy
NOT,((DOMAIN-KEYWORD,ads)),proxy
IP-CIDR,10.0.0.0/8,REJECT
MATCH,DIRECT
`)
	hosts := []string{"corp.example", "x.corp.example", "ads.example", "other.example"}
	for _, dst := range []string{"10.1.1.1:443", "10.1.1.1:22", "172.16.0.1:80", "203.0.113.1:443"} {
		m := meta("tcp", "192.168.1.2:5000", dst, "")
		base := rs.Match(m, nil).Index
		changed := false
		for _, h := range hosts {
			mh := meta("tcp", "192.168.1.2:5000", dst, h)
			mh.RealDst = true
			changed = changed || rs.Match(mh, nil).Index != base
		}
		if could := rs.NameCouldMatter(meta("tcp", "192.168.1.2:5000", dst, ""), nil); could != changed {
			t.Errorf("%s: NameCouldMatter = %v, but a name changes the rule: %v", dst, could, changed)
		}
	}
}
