package rules

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// gen100k returns a rule file of 100,000 mixed domain and CIDR rules behind a
// few linear rules, a RULE-SET file of the same entries without targets, and
// flows that hit and miss them.
func gen100k() (rules, set string, metas []*Metadata) {
	r := rand.New(rand.NewPCG(1, 2))
	var rb, sb strings.Builder
	rb.WriteString("DOMAIN-KEYWORD,adserver,REJECT\nDOMAIN-REGEX,^telemetry[0-9]*\\.,REJECT\nDST-PORT,25,REJECT\nPROCESS-NAME,torrent,DIRECT\n")
	tlds := []string{"com", "net", "org", "io", "de", "cn"}
	targets := []string{"DIRECT", "corp", "proxy"}
	var hosts []string
	var ips []netip.Addr
	for i := range 100_000 {
		tgt := targets[i%len(targets)]
		switch i % 5 {
		case 0, 1, 2: // domain suffix
			d := fmt.Sprintf("d%x-%d.%s", r.Uint32(), i, tlds[i%len(tlds)])
			fmt.Fprintf(&rb, "DOMAIN-SUFFIX,%s,%s\n", d, tgt)
			fmt.Fprintf(&sb, "+.%s\n", d)
			if i%97 == 0 {
				hosts = append(hosts, "www.api."+d)
			}
		case 3: // exact domain
			d := fmt.Sprintf("h%x.example.%s", r.Uint32(), tlds[i%len(tlds)])
			fmt.Fprintf(&rb, "DOMAIN,%s,%s\n", d, tgt)
			fmt.Fprintf(&sb, "%s\n", d)
		case 4: // CIDR
			var p netip.Prefix
			if i%4 == 0 {
				var a [16]byte
				a[0], a[1] = 0x20, 0x01
				for j := 2; j < 8; j++ {
					a[j] = byte(r.Uint32())
				}
				p = netip.PrefixFrom(netip.AddrFrom16(a), 32+r.IntN(33)).Masked()
			} else {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(r.IntN(223) + 1), byte(r.Uint32()), byte(r.Uint32()), 0}), 8+r.IntN(17)).Masked()
			}
			fmt.Fprintf(&rb, "IP-CIDR,%s,%s,no-resolve\n", p, tgt)
			fmt.Fprintf(&sb, "%s\n", p)
			if i%89 == 4 {
				ips = append(ips, p.Addr().Next())
			}
		}
	}
	rb.WriteString("MATCH,proxy\n")
	for i, h := range hosts {
		metas = append(metas, &Metadata{Network: "tcp", Host: h, Dst: netip.AddrPortFrom(netip.Addr{}, 443), UID: -1})
		if i%3 == 0 { // a miss that walks every label and falls through to MATCH
			metas = append(metas, &Metadata{Network: "tcp", Host: "cdn.static.miss" + h, Dst: netip.AddrPortFrom(netip.Addr{}, 443), UID: -1})
		}
	}
	for _, a := range ips {
		metas = append(metas, &Metadata{Network: "udp", Src: netip.MustParseAddrPort("10.0.0.2:5353"), Dst: netip.AddrPortFrom(a, 443), UID: -1})
	}
	r.Shuffle(len(metas), func(i, j int) { metas[i], metas[j] = metas[j], metas[i] })
	return rb.String(), sb.String(), metas
}

var benchOpts = ParseOptions{TargetNames: []string{"corp", "proxy"}}

func BenchmarkLoad100k(b *testing.B) {
	rules, set, _ := gen100k()
	b.Run("rules", func(b *testing.B) {
		b.SetBytes(int64(len(rules)))
		for b.Loop() {
			if _, err := Parse(strings.NewReader(rules), "bench.txt", benchOpts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rule-set", func(b *testing.B) {
		opts := benchOpts
		opts.RuleSetLoader = func(string) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(set)), nil }
		b.SetBytes(int64(len(set)))
		for b.Loop() {
			if _, err := Parse(strings.NewReader("DST-PORT,25,REJECT\nRULE-SET,set.txt,corp\nMATCH,DIRECT\n"), "bench.txt", opts); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMatch100k(b *testing.B) {
	rules, _, metas := gen100k()
	rs, err := Parse(strings.NewReader(rules), "bench.txt", benchOpts)
	if err != nil {
		b.Fatal(err)
	}
	lookup := func(*Metadata) (string, int, bool) { return "/usr/bin/curl", 1000, true }
	matched := 0
	for _, m := range metas {
		c := *m
		if rs.Match(&c, lookup).Index < rs.Len()-1 {
			matched++
		}
	}
	if matched < len(metas)/2 {
		b.Fatalf("only %d of %d benchmark flows hit a rule before MATCH", matched, len(metas))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := *metas[i%len(metas)]
		rs.Match(&m, lookup)
		i++
	}
}
